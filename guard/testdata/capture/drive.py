"""Drive headless Chromium through JupyterLab 4.5 and record every request.

Runs inside the capture namespace (capture.sh starts it there, after
JupyterLab): starts /usr/bin/chromium with a fresh profile and the DevTools
protocol on 127.0.0.1, opens JupyterLab, runs each step of STEPS through
JupyterLab's own commands and services (window.jupyterapp, exposed with
--LabApp.expose_app_in_browser), then nbclassic's pages, and writes one JSON
line per request the browser sent: the step, method, URL path and query
(token and _xsrf values replaced), the resource type, whether it was a
websocket, a Range header, and the status JupyterLab got (no guard in front).

Uses only the standard library and python3-websocket (Debian).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import websocket

LAB, TOKEN, OUT = sys.argv[1], sys.argv[2], sys.argv[3]  # LAB: http://127.0.0.1:8888/user/x/


class CDP:
    def __init__(self, url):
        self.ws = websocket.create_connection(url, timeout=120, suppress_origin=True)
        self.next = 0
        self.pending = {}
        self.events = []
        self.lock = threading.Lock()
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        while True:
            try:
                msg = json.loads(self.ws.recv())
            except Exception:
                return
            if "id" in msg:
                ev = self.pending.pop(msg["id"], None)
                if ev:
                    ev[1] = msg
                    ev[0].set()
            else:
                with self.lock:
                    self.events.append((time.time(), msg))

    def call(self, method, **params):
        with self.lock:
            self.next += 1
            i = self.next
            slot = [threading.Event(), None]
            self.pending[i] = slot
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        if not slot[0].wait(180):
            raise RuntimeError("no answer to " + method)
        if "error" in slot[1]:
            raise RuntimeError(method + ": " + json.dumps(slot[1]["error"]))
        return slot[1].get("result", {})

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError("js: " + json.dumps(r["exceptionDetails"])[:800])
        return r.get("result", {}).get("value")


def settle(seconds=2.0):
    time.sleep(seconds)


def main():
    profile = tempfile.mkdtemp(prefix="hw-chromium-")
    chrome = subprocess.Popen(
        [
            "/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=9222", "--remote-allow-origins=*",
            "--user-data-dir=" + profile, "about:blank",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen("http://127.0.0.1:9222/json/list", timeout=2))
                page = next(t for t in targets if t["type"] == "page")
                break
            except Exception:
                time.sleep(0.2)
        else:
            raise RuntimeError("chromium's DevTools did not come up")
        cdp = CDP(page["webSocketDebuggerUrl"])
        cdp.call("Network.enable")
        cdp.call("Page.enable")
        marks = []

        def step(name, js=None, nav=None, wait=2.5):
            marks.append((time.time(), name))
            if nav:
                cdp.call("Page.navigate", url=nav)
            if js:
                cdp.js(js)
            settle(wait)

        app = "window.jupyterapp"
        ready = "(async () => { for (let i = 0; i < 600 && !window.jupyterapp; i++) await new Promise(r => setTimeout(r, 100)); await window.jupyterapp.restored; })()"
        step("open-lab", nav=LAB + "lab?token=" + TOKEN, wait=1)
        cdp.js(ready)
        settle(4)
        # Helpers in the page: open a document and make it the current
        # widget (a headless window has no focus to do it), bound every
        # step so that one stuck command does not stall the capture.
        cdp.js("""(() => {
          const app = window.jupyterapp;
          window.hwOpen = async (path, factory) => {
            const w = await app.commands.execute('docmanager:open', factory ? {path, factory} : {path});
            app.shell.activateById(w.id);
            await w.context.ready;
            if (w.sessionContext) await w.sessionContext.ready;
            window.hwCurrent = w;
            return true;
          };
          window.hwWait = ms => new Promise(r => setTimeout(r, ms));
          // Downloads and exports open their URL in a new window or through
          // an <a download> click, which a headless page does not fetch
          // itself: fetch the URL JupyterLab built, with its cookies, as the
          // browser would.
          window.open = (url) => { fetch(url, {credentials: 'same-origin'}).catch(() => null); return null; };
          const click = HTMLAnchorElement.prototype.click;
          HTMLAnchorElement.prototype.click = function () {
            if (this.hasAttribute('download')) { fetch(this.href, {credentials: 'same-origin'}).catch(() => null); return; }
            return click.call(this);
          };
          window.hwBound = (p, ms) => Promise.race([p, new Promise((_, no) => setTimeout(() => no(new Error('step timed out')), ms))]);
        })()""")
        cur = "window.hwCurrent"
        steps = [
            ("open-notebook", "await hwOpen('plots.ipynb');"),
            ("run-all-cells", "%s.shell.activateById(%s.id); await %s.commands.execute('notebook:run-all-cells'); await hwWait(4000);" % (app, cur, app)),
            ("save", "await %s.context.save();" % cur),
            ("new-notebook", "const w = await %s.commands.execute('notebook:create-new', {cwd: '', kernelName: 'python3'}); %s.shell.activateById(w.id); "
             "await w.context.ready; await w.sessionContext.ready; w.content.activeCell.model.sharedModel.setSource('print(6 * 7)'); "
             "await %s.commands.execute('notebook:run-cell'); await hwWait(1500); await w.context.save();" % (app, app, app)),
            ("rename", "await %s.serviceManager.contents.rename('Untitled.ipynb', 'renamed.ipynb');" % app),
            ("new-folder", "await %s.serviceManager.contents.newUntitled({path: '', type: 'directory'});" % app),
            ("upload", "await %s.serviceManager.contents.save('uploaded.txt', {type: 'file', format: 'base64', content: btoa('hello, pod'), name: 'uploaded.txt', path: 'uploaded.txt'});" % app),
            ("copy", "await %s.serviceManager.contents.copy('plots.ipynb', 'sub');" % app),
            ("checkpoints", "await %s.serviceManager.contents.createCheckpoint('plots.ipynb'); await %s.serviceManager.contents.listCheckpoints('plots.ipynb');" % (app, app)),
            ("open-subdir-notebook", "await %s.commands.execute('filebrowser:go-to-path', {path: 'sub'}); await hwOpen('sub/inner.ipynb');" % app),
            ("terminal", "const t = await %s.commands.execute('terminal:create-new'); await hwWait(2000);" % app),
            ("settings-editor", "await %s.commands.execute('settingeditor:open'); await hwWait(1000);" % app),
            ("open-csv", "await hwOpen('data.csv');"),
            ("download-csv", "await hwOpen('data.csv'); await %s.context.download(); await hwWait(500);" % cur),
            ("open-py", "await hwOpen('script.py');"),
            ("open-markdown", "await hwOpen('README.md');"),
            ("open-png", "await hwOpen('image.png');"),
            ("export-html", "await hwOpen('plots.ipynb'); await %s.commands.execute('notebook:export-to-format', {format: 'html'});" % app),
            ("rename-csv-to-ipynb", "await %s.serviceManager.contents.rename('data2.csv', 'data2.ipynb'); await hwOpen('data2.ipynb').catch(() => null);" % app),
            ("download-notebook", "await hwOpen('plots.ipynb'); await %s.context.download(); await hwWait(500);" % cur),
            ("delete", "await %s.serviceManager.contents.delete('renamed.ipynb');" % app),
            ("restart-kernel", "await hwOpen('plots.ipynb'); await %s.sessionContext.session.kernel.restart();" % cur),
            ("shutdown-all", "await %s.serviceManager.sessions.shutdownAll(); await %s.serviceManager.terminals.shutdownAll();" % (app, app)),
        ]
        for name, body in steps:
            try:
                step(name, js="hwBound((async () => { %s })(), 60000)" % body)
            except RuntimeError as e:
                print("step %s: %s" % (name, e), file=sys.stderr)
        step("classic-tree", nav=LAB + "tree?token=" + TOKEN, wait=5)
        step("classic-notebook", nav=LAB + "notebooks/plots.ipynb", wait=8)
        step("lab-doc-mode", nav=LAB + "doc/tree/plots.ipynb", wait=1)
        cdp.js(ready)
        settle(4)
        write(cdp.events, marks)
    finally:
        chrome.kill()
        chrome.wait()
        shutil.rmtree(profile, ignore_errors=True)


SECRET = re.compile(r"(token|_xsrf)=[^&]*")


def write(events, marks):
    def step_at(t):
        name = marks[0][1]
        for mt, mn in marks:
            if mt <= t:
                name = mn
        return name

    reqs, order = {}, []
    for t, ev in events:
        m, p = ev["method"], ev.get("params", {})
        if m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not url.startswith("http://127.0.0.1:8888/"):
                continue
            rid = p["requestId"]
            if rid in reqs and "redirectResponse" in p:
                reqs[rid]["status"] = p["redirectResponse"]["status"]
                rid = rid + "+" + str(len(order))
            h = {k.lower(): v for k, v in p["request"].get("headers", {}).items()}
            reqs[rid] = {
                "step": step_at(t), "method": p["request"]["method"], "target": SECRET.sub(r"\1=SECRET", url[len("http://127.0.0.1:8888"):]),
                "type": p.get("type", ""), "websocket": False, "range": "range" in h, "status": None,
            }
            order.append(rid)
        elif m == "Network.responseReceived" and p["requestId"] in reqs:
            reqs[p["requestId"]]["status"] = p["response"]["status"]
        elif m == "Network.webSocketCreated":
            url = p["url"].replace("ws://", "http://", 1)
            if url.startswith("http://127.0.0.1:8888/"):
                rid = "ws" + p["requestId"]
                reqs[rid] = {"step": step_at(t), "method": "GET", "target": SECRET.sub(r"\1=SECRET", url[len("http://127.0.0.1:8888"):]),
                             "type": "WebSocket", "websocket": True, "range": False, "status": None}
                order.append(rid)
        elif m == "Network.webSocketHandshakeResponseReceived" and "ws" + p["requestId"] in reqs:
            reqs["ws" + p["requestId"]]["status"] = p["response"]["status"]
    with open(OUT, "w") as f:
        for rid in order:
            f.write(json.dumps(reqs[rid]) + "\n")
    print("wrote %d requests to %s" % (len(order), OUT), file=sys.stderr)


if __name__ == "__main__":
    main()
