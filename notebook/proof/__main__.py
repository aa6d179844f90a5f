"""The lockdown proof suite: python -m proof (as root, inside a network
namespace of its own; scripts/notebook-proof.sh makes it and cleans up).

Two users on one JupyterHub 5.5.0, each with a server from its own
single-user environment: "locked" (the hardened image's way) and "open"
(the same extension without the lockdown). For each attempt, on both at
once: do it as the user from a kernel, stop and start the server through
the hub's API with the user's token, then check that the lockdown still
holds: the server runs the extension, contents are notebooks-only, JupyterLab's
page config and (with --browser) the real JupyterLab have no download
entries, no code of the user's ran in the server. Prints the table; exits
non-zero unless every attempt held on the locked server and succeeded on the
open one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time

from . import env
from .attempts import ATTEMPTS, PRELUDE, Attempt
from .hub import LocalHub, User, http

SECRET = "PR00F-SECRET-51c2"
CSV = f"{SECRET},alice,4242\n"


def make_user(name: str, home: str) -> User:
    subprocess.run(["useradd", "--home-dir", home, "--create-home", "--shell", "/bin/bash",
                    "--user-group", name], check=True)
    pw = pwd.getpwnam(name)
    # The user's files: a secret CSV and a notebook, in the server's root.
    with open(os.path.join(home, "data.csv"), "w") as f:
        f.write(CSV)
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                     "outputs": [], "source": "print(6 * 7)"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    with open(os.path.join(home, "nb.ipynb"), "w") as f:
        json.dump(nb, f)
    for p in ("data.csv", "nb.ipynb"):
        os.chown(os.path.join(home, p), pw.pw_uid, pw.pw_gid)
    return User(name, home, pw.pw_uid, pw.pw_gid)


async def observe(hub: LocalHub, user: User, attempt: Attempt | None, started: bool) -> list[str]:
    """What is broken; [] means the lockdown held."""
    if not started:
        return []
    base = hub.server_url(user)
    broken = []
    st = await http("GET", base + "api/hubwarden", user.token)
    if st.code != 200:
        broken.append(f"extension not loaded (/api/hubwarden {st.code})")
    r = await http("GET", base + "api/contents/data.csv?type=file", user.token)
    if SECRET.encode() in r.body:
        broken.append("data.csv served by the contents API")
    lab = await http("GET", base + "lab", user.token)
    m = re.search(rb'<script id="jupyter-config-data" type="application/json">(.*?)</script>', lab.body, re.S)
    if not m:
        broken.append(f"no JupyterLab page ({lab.code})")
    else:
        pc = json.loads(m.group(1))
        enabled = [p for p in env.DOWNLOAD_PLUGINS if p not in pc.get("disabledExtensions", [])]
        if enabled:
            broken.append(f"page config enables {len(enabled)} download plugins")
        if attempt and attempt.probe == "labextension":
            if any(e.get("name") == "hubwarden-proof-ext" for e in pc.get("federated_extensions", [])):
                broken.append("the user's labextension is loaded into JupyterLab")
    if attempt and attempt.probe == "labextension":
        r = await http("GET", base + "lab/extensions/hubwarden-proof-ext/static/data.csv")  # no token
        if SECRET.encode() in r.body:
            broken.append("data.csv served without authentication from the labextension")
    if attempt and attempt.probe == "kernelspec":
        r = await http("GET", base + "kernelspecs/proofk/logo-64x64.png", user.token)
        if SECRET.encode() in r.body:
            broken.append("data.csv served as the kernelspec's logo")
    out = await hub.run_as_user(user, "import os\np = os.path.expanduser('~/.proof-ran-in-server')\n"
                                      "print(open(p).read().strip() if os.path.exists(p) else '')")
    if out.strip():
        broken.append("the user's code ran in the server")
    if attempt and attempt.probe == "ptrace":
        out = await hub.run_as_user(user, "import os\ntry:\n    open('/proc/%d/mem' % os.getppid(), 'r+b').close()\n"
                                          "    print('OPENED')\nexcept OSError as e:\n    print('refused', e.errno)")
        if "OPENED" in out:
            broken.append("the server's memory is writable by the user's kernel")
    return broken


def offline_as_user(user: User, code: str) -> None:
    """Undo as the user when their server is down (refused to start)."""
    subprocess.run(["runuser", "-u", user.name, "--", "/usr/bin/python3", "-c",
                    PRELUDE.replace("import os, sys, site", "import os, sys, site") + code],
                   env={"HOME": user.home, "PATH": "/usr/bin:/bin", "JUPYTERHUB_USER": user.name},
                   capture_output=True, timeout=120, cwd=user.home)


async def run_attempt(hub: LocalHub, user: User, a: Attempt, log, browser=None) -> dict:
    t0 = time.monotonic()
    out = await hub.run_as_user(user, PRELUDE + a.apply) if a.apply else ""
    log(f"  {user.name} {a.id}: applied: {out.strip()[-200:]}")
    started = True
    if a.restart:
        await hub.stop_server(user)
        start_env = {k: v.replace("{user}", user.name).replace("~", user.home) for k, v in a.start_env.items()}
        started = await hub.start_server(user, start_env)
    broken = await observe(hub, user, a, started)
    if browser and started and a.restart:
        broken += await browser.check(user)
    # Undo, and leave a clean server for the next attempt.
    if started and a.undo:
        await hub.run_as_user(user, PRELUDE + a.undo)
    elif a.undo:
        offline_as_user(user, a.undo)
    marker = os.path.join(user.home, ".proof-ran-in-server")
    if os.path.exists(marker):
        os.remove(marker)
    if a.restart:
        await hub.stop_server(user)
        if not await hub.start_server(user):
            raise RuntimeError(f"{user.name}'s server did not start again after {a.id}")
    return {"started": started, "broken": broken, "seconds": round(time.monotonic() - t0, 1)}


def verdict(res: dict) -> str:
    if not res["started"]:
        return "refused to start (fail closed)"
    if not res["broken"]:
        return "held"
    return "SUBVERTED: " + "; ".join(res["broken"])


async def main_async(args) -> int:
    run = args.run_dir
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    log = (lambda s: print(s, flush=True))
    tag = str(os.getpid())
    users = {
        "locked": make_user(f"hwnbl{tag}", os.path.join(run, "home-locked")),
        "open": make_user(f"hwnbo{tag}", os.path.join(run, "home-open")),
    }
    args.cleanup_users.extend(u.name for u in users.values())
    t0 = time.monotonic()
    installs = {
        "locked": env.build(os.path.join(run, "env-locked"), src, True, None),
        "open": env.build(os.path.join(run, "env-open"), src, False, (users["open"].uid, users["open"].gid)),
    }
    log(f"proof: environments built in {time.monotonic() - t0:.1f} s")
    servers = {u.name: {"cmd": installs[k].cmd, "env": installs[k].env} for k, u in users.items()}
    hub = LocalHub(run, servers, password=users["locked"].password)
    args.hub = hub
    await hub.start()
    for u in users.values():
        u.password = hub.password
        u.token = await hub.user_token(u)
    t1 = time.monotonic()
    ok = await asyncio.gather(*(hub.start_server(u) for u in users.values()))
    if not all(ok):
        log(f"proof: a server did not start; see {hub.dir}/jupyterhub.log")
        return 2
    log(f"proof: both servers up in {time.monotonic() - t1:.1f} s")
    results: dict[str, dict[str, dict]] = {}
    base = await asyncio.gather(*(observe(hub, u, None, True) for u in users.values()))
    results["baseline"] = {k: {"started": True, "broken": b, "seconds": 0} for k, b in zip(users, base)}
    browser = None
    if args.browser:
        from .browser import Browser

        browser = Browser(hub, log)
        await browser.start()
        b = await asyncio.gather(*(browser.check(u, first=True) for u in users.values()))
        for k, found in zip(users, b):
            results["baseline"][k]["broken"] += found
    selected = [a for a in ATTEMPTS if not args.only or a.id in args.only]
    for a in selected:
        log(f"proof: {a.id}")
        res = await asyncio.gather(*(run_attempt(hub, u, a, log, browser) for u in users.values()))
        results[a.id] = dict(zip(users, res))
    if browser:
        await browser.stop()
    # The table.
    rows = [("baseline", "no attempt")] + [(a.id, a.title) for a in selected]
    print("\n| attempt (as the user, then Stop and Start through the hub) | with the lockdown | without the lockdown |")
    print("|---|---|---|")
    failures = 0
    for rid, title in rows:
        lk, op = results[rid]["locked"], results[rid]["open"]
        print(f"| {title} | {verdict(lk)} | {verdict(op)} |")
        if rid == "baseline":
            failures += bool(lk["broken"]) + bool(op["broken"])
            continue
        if lk["broken"]:
            failures += 1
        if not op["broken"]:
            failures += 1
            print(f"proof: {rid}: the attempt did not succeed without the lockdown: the suite cannot tell the difference")
    with open(os.path.join(run, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nproof: {len(selected)} attempts, {failures} failures, {time.monotonic() - t0:.0f} s")
    return 1 if failures else 0


def kill_user_processes(uid: int) -> None:
    """SIGKILL, by pid, every process of a user this run created."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue
        if str(uid) in uids:
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m proof")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--browser", action="store_true", help="also check the real JupyterLab in Chromium")
    p.add_argument("--only", nargs="*", help="attempt ids")
    args = p.parse_args()
    args.cleanup_users = []
    args.hub = None
    try:
        return asyncio.run(main_async(args))
    finally:
        if args.hub:
            args.hub.stop()
        for name in args.cleanup_users:
            kill_user_processes(pwd.getpwnam(name).pw_uid)
            subprocess.run(["userdel", "--force", name], capture_output=True)
        if os.environ.get("HUBWARDEN_PROOF_KEEP") != "1":
            shutil.rmtree(args.run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
