"""Ask a real jupyterhub-singleuser server how it routes request targets.

Run with the Python of the singleuser environment (requirements/singleuser.txt:
jupyter-server 2.19, JupyterLab 4.5, nbclassic, jupyter-lsp, terminals,
nbgitpuller, JupyterHub 5.5's singleuser extension):

    python tornado_oracle.py USER [SERVER] < targets.jsonl > answers.jsonl
    python tornado_oracle.py --dump USER [SERVER] > routes.jsonl

It builds the server application exactly as jupyterhub-singleuser does
(JupyterHubSingleUser.initialize_server, every enabled extension loaded),
answering the hub's version check from a stub on 127.0.0.1, and never starts
serving. For every input line {"target": "..."} it writes one line with what
tornado's Application.find_handler picks and what the handler would read:

    {"target": ..., "handler": "module.Class" or null, "args": {name: hex of
     the percent-decoded bytes}, "query": {name: value or null or "!400"}}

or {"target": ..., "error": "..."} when tornado refuses the request itself.
--dump writes the routing table instead: one {"re", "handler"} per route, in
the order tornado tries them. The first line of both modes is
{"base_url": ...}, the prefix JupyterHub gives this user's server.

The guard's tests (guard/oracle_test.go) compare its router with these
answers; nothing here is used by hubwarden at run time.
"""

import atexit
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading


def fake_hub():
    class Hub(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"version": "5.5.0"}'
            self.send_response(200)
            self.send_header("X-JupyterHub-Version", "5.5.0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv.server_address[1]


def build(user, server):
    from jupyterhub.utils import url_escape_path

    prefix = "/user/" + url_escape_path(user) + "/"
    if server:
        prefix += url_escape_path(server) + "/"
    home = tempfile.mkdtemp(prefix="hw-oracle-")
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    port = fake_hub()
    os.environ.update(
        {
            "HOME": home,
            "JUPYTER_CONFIG_DIR": os.path.join(home, ".jupyter"),
            "JUPYTER_DATA_DIR": os.path.join(home, ".local/share/jupyter"),
            "JUPYTER_RUNTIME_DIR": os.path.join(home, "runtime"),
            "JUPYTERHUB_API_TOKEN": "x" * 32,
            "JUPYTERHUB_API_URL": "http://127.0.0.1:%d/hub/api" % port,
            "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-" + url_escape_path(user),
            "JUPYTERHUB_USER": user,
            "JUPYTERHUB_SERVER_NAME": server,
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:8888" + prefix,
            "JUPYTERHUB_BASE_URL": "/",
            "JUPYTERHUB_OAUTH_CALLBACK_URL": prefix + "oauth_callback",
            "JUPYTERHUB_HOST": "",
        }
    )
    # Extensions print banners on stdout; keep stdout for the answers.
    real = sys.stdout
    sys.stdout = sys.stderr
    try:
        from jupyterhub.singleuser.extension import JupyterHubSingleUser

        app = JupyterHubSingleUser.initialize_server(argv=["--ServerApp.root_dir=" + home])
    finally:
        sys.stdout = real
    return app.web_app, prefix


def dump(web_app):
    from tornado.routing import PathMatches

    def walk(router):
        for rule in router.rules:
            if isinstance(rule.matcher, PathMatches):
                t = rule.target
                yield {"re": rule.matcher.regex.pattern, "handler": t.__module__ + "." + t.__qualname__}
            if hasattr(rule.target, "rules"):
                yield from walk(rule.target)

    for r in walk(web_app.default_router):
        print(json.dumps(r))


QUERY_NAMES = ("type", "format", "content", "hash")


def first_match(web_app, req):
    """The pattern of the route tornado picks: the first PathMatches rule
    whose pattern matches, in the order RuleRouter.find_handler tries them
    (nested routers in place)."""
    from tornado.routing import PathMatches

    def walk(router):
        for rule in router.rules:
            if rule.matcher.match(req) is None:
                continue
            if isinstance(rule.matcher, PathMatches):
                return rule.matcher.regex.pattern
            if hasattr(rule.target, "rules"):
                found = walk(rule.target)
                if found is not None:
                    return found
        return None

    return walk(web_app.default_router)


class _Conn:
    """The part of an HTTP connection a RequestHandler touches when built."""

    def set_close_callback(self, callback):
        pass


def answer(web_app, target):
    from tornado import httputil, web

    try:
        req = httputil.HTTPServerRequest(
            method="GET", uri=target, version="HTTP/1.1", headers=httputil.HTTPHeaders({"Host": "pod:8888"}),
            connection=_Conn(),
        )
    except httputil.HTTPInputError as e:
        return {"target": target, "error": str(e)}
    delegate = web_app.find_handler(req)
    cls = delegate.handler_class
    out = {"target": target, "handler": None, "re": first_match(web_app, req), "args": {}, "query": {}}
    if cls is not web.ErrorHandler:
        out["handler"] = cls.__module__ + "." + cls.__qualname__
    if delegate.path_kwargs:
        for k, v in delegate.path_kwargs.items():
            if v is not None:
                out["args"][k] = v.hex()
    else:
        for i, v in enumerate(delegate.path_args or [], 1):
            if v is not None:
                out["args"][str(i)] = v.hex()
    handler = web.RequestHandler(web_app, req)
    for name in QUERY_NAMES:
        try:
            out["query"][name] = handler.get_query_argument(name, None)
        except web.HTTPError:
            out["query"][name] = "!400"
    return out


def main():
    args = sys.argv[1:]
    mode = "route"
    if args and args[0] == "--dump":
        mode = "dump"
        args = args[1:]
    user = args[0]
    server = args[1] if len(args) > 1 else ""
    web_app, prefix = build(user, server)
    print(json.dumps({"base_url": prefix}))
    if mode == "dump":
        dump(web_app)
        return
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(answer(web_app, json.loads(line)["target"])))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
