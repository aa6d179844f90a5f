"""The target the proof runs against: a JupyterHub, users with tokens, their
servers, code run as a user in a kernel of the running server.

`Target` is what the attempts and checks use; `LocalHub` implements it with
JupyterHub 5.5.0 (LocalProcessSpawner as root, setuid to each user) and
configurable-http-proxy on loopback, inside the network namespace the
caller made. Another implementation (the e2e bed) only needs the same
methods: a hub URL, a user token, stop/start through the hub API, and
kernels through the proxy.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass, field

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

HUB_VENV = os.environ.get("HWNB_HUB_VENV", "/opt/hubwarden/venv/hub")
CHP = os.environ.get("HWNB_CHP", "/usr/bin/configurable-http-proxy")


@dataclass
class User:
    name: str
    home: str
    uid: int
    gid: int
    token: str = ""
    password: str = field(default_factory=lambda: secrets.token_hex(8))


class Response:
    def __init__(self, code: int, body: bytes, headers):
        self.code, self.body, self.headers = code, body, headers

    def json(self):
        return json.loads(self.body)


async def http(method: str, url: str, token: str | None = None, body=None, timeout: float = 60,
               follow: bool = True) -> Response:
    headers = {"Authorization": f"token {token}"} if token else {}
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        headers["Content-Type"] = "application/json"
    req = HTTPRequest(url, method=method, headers=headers, body=body, request_timeout=timeout,
                      follow_redirects=follow, allow_nonstandard_methods=True)
    try:
        r = await AsyncHTTPClient().fetch(req)
    except HTTPClientError as e:
        if e.response is None:
            return Response(599, str(e).encode(), {})
        r = e.response
    except OSError as e:
        return Response(599, str(e).encode(), {})
    return Response(r.code, r.body or b"", r.headers)


HUB_CONFIG = '''
import json, os, subprocess
from jupyterhub.spawner import LocalProcessSpawner

SERVERS = json.loads({servers!r})
LOGS = {logs!r}

class ProofSpawner(LocalProcessSpawner):
    """Each user's install: its command and environment. Variables the user
    passes when starting their server (user_options["env"]) are applied too:
    the proof's stand-in for every place a deployment lets a user choose
    variables (profile forms, options passed to the spawner)."""

    def get_env(self):
        env = super().get_env()
        env.update(SERVERS[self.user.name]["env"])
        env.update({{str(k): str(v) for k, v in (self.user_options or {{}}).get("env", {{}}).items()}})
        return env

    def _cmd_default(self):
        return SERVERS[self.user.name]["cmd"]

    async def start(self):
        # Each server's output in a log of its own (what it said when it
        # refused to start).
        self.cmd = SERVERS[self.user.name]["cmd"]
        with open(os.path.join(LOGS, self.user.name + ".log"), "ab") as log:
            log.write(b"\\n--- start\\n")
            log.flush()
            self.popen_kwargs = {{"stdout": log, "stderr": subprocess.STDOUT}}
            return await super().start()

c.JupyterHub.spawner_class = ProofSpawner
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.JupyterHub.db_url = "sqlite:///{dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/cookie_secret"
c.JupyterHub.pid_file = "{dir}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = set(SERVERS)
c.JupyterHub.services = [{{"name": "proof", "api_token": {service_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "proof", "scopes": ["admin:users", "admin:servers", "tokens", "list:users"], "services": ["proof"]}}]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.poll_interval = 2
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.cleanup_servers = True
'''


class LocalHub:
    """JupyterHub 5.5.0 on loopback (the caller's network namespace)."""

    def __init__(self, run_dir: str, servers: dict[str, dict], password: str):
        self.dir = os.path.join(run_dir, "hub")
        self.logs = os.path.join(run_dir, "server-logs")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.logs, exist_ok=True)
        self.port, self.hub_port, self.api_port = 18000, 18081, 18001
        self.url = f"http://127.0.0.1:{self.port}"
        self.service_token = secrets.token_hex(24)
        self.password = password
        cfg = HUB_CONFIG.format(servers=json.dumps(servers), logs=self.logs, port=self.port, hub_port=self.hub_port,
                                api_port=self.api_port, chp=CHP, proxy_token=secrets.token_hex(24),
                                dir=self.dir, password=password, service_token=self.service_token)
        self.config = os.path.join(self.dir, "jupyterhub_config.py")
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(cfg))
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        log = open(os.path.join(self.dir, "jupyterhub.log"), "wb")
        self.proc = subprocess.Popen(
            [os.path.join(HUB_VENV, "bin", "jupyterhub"), "-f", self.config],
            cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PATH": f"{HUB_VENV}/bin:" + os.environ.get("PATH", "")},
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited ({self.proc.returncode}); see {self.dir}/jupyterhub.log")
            r = await http("GET", f"{self.url}/hub/api/", timeout=5)
            if r.code == 200:
                return
            await asyncio.sleep(0.5)
        raise RuntimeError("jupyterhub did not answer within 90 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)

    async def user_token(self, user: User) -> str:
        """A token of the user's own (what /hub/token gives them)."""
        r = await http("POST", f"{self.url}/hub/api/users/{user.name}/tokens", self.service_token,
                       {"note": "hubwarden proof", "expires_in": 3600})
        if r.code != 201:
            raise RuntimeError(f"creating a token for {user.name}: {r.code} {r.body[:200]!r}")
        return r.json()["token"]

    # What the user can do through the hub's API with their token.

    async def stop_server(self, user: User) -> None:
        r = await http("DELETE", f"{self.url}/hub/api/users/{user.name}/server", user.token)
        if r.code not in (202, 204, 400):
            raise RuntimeError(f"stopping {user.name}'s server: {r.code} {r.body[:200]!r}")
        await self._wait(user, lambda m: not m.get("servers"), 60, "stop")

    async def start_server(self, user: User, env: dict | None = None) -> bool:
        """Start; True when the server is ready, False when it did not start."""
        r = await http("POST", f"{self.url}/hub/api/users/{user.name}/server", user.token,
                       {"env": env or {}})
        if r.code not in (201, 202):
            return False
        try:
            return await self._wait(user, lambda m: (m.get("servers", {}).get("", {}).get("ready")
                                                     or not m.get("servers")), 240, "start")
        except TimeoutError:
            return False

    def server_log(self, user: User) -> str:
        """What the user's server printed (all its starts)."""
        try:
            with open(os.path.join(self.logs, user.name + ".log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    async def _wait(self, user: User, done, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = await http("GET", f"{self.url}/hub/api/users/{user.name}", user.token)
            if r.code == 200:
                m = r.json()
                if done(m):
                    return bool(m.get("servers", {}).get("", {}).get("ready"))
            await asyncio.sleep(1)
        raise TimeoutError(f"{user.name}: server {what} took over {timeout} s")

    def server_url(self, user: User) -> str:
        return f"{self.url}/user/{user.name}/"

    def kernel_log(self, user: User, kid: str, limit: int = 8) -> str:
        """The lines of the user's server log about one kernel (its start,
        restarts, errors), the last few."""
        lines = [ln.strip()[:240] for ln in self.server_log(user).splitlines()
                 if kid in ln or "KernelRestarter" in ln or "Address already in use" in ln]
        return " | ".join(lines[-limit:])

    async def run_as_user(self, user: User, code: str, timeout: float = 240, log=None) -> str:
        """Run Python code in a new kernel of the user's running server (as a
        user does from a notebook); returns its stdout and stderr.

        A kernel can be lost to the harness rather than to the lockdown. A
        kernel that dies in its first 10 s (one of the ports its server chose
        taken on the loopback all the proof's servers share, say) is started
        again on new ports, and a websocket opened before that keeps the old
        ones: jupyter-server sends it "restarting" and nothing more. So, as a
        user would: on "restarting" or "dead", a closed websocket, or no
        kernel_info reply within 30 s, connect again; after that, a new
        kernel, at most three in all. Each retry is logged with what the
        server's log says of the kernel, and the last error names it. The
        code runs once: only kernel_info is asked again."""
        deadline = time.monotonic() + timeout
        say = log or (lambda s: None)
        problem = ""
        for kernel in range(3):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            kid, ready, out, problem = await self._run_in_new_kernel(user, code, left)
            if ready:
                return out
            problem = f"{problem}; the server's log of it: {self.kernel_log(user, kid) or '(nothing)'}"
            say(f"  {user.name}: kernel {kernel + 1} of 3 lost: {problem}")
        raise RuntimeError(f"{user.name}'s kernel never answered kernel_info: {problem}")

    async def _run_in_new_kernel(self, user: User, code: str, timeout: float) -> tuple[str, bool, str, str]:
        """(kernel id, whether it answered kernel_info, the output, what went
        wrong when it did not)."""
        base = self.server_url(user)
        r = await http("POST", base + "api/kernels", user.token, {"name": "python3"})
        if r.code != 201:
            raise RuntimeError(f"starting a kernel for {user.name}: {r.code} {r.body[:300]!r}")
        kid = r.json()["id"]
        ws_url = base.replace("http://", "ws://") + f"api/kernels/{kid}/channels"
        session = ""
        conn = None

        def send(msg_type: str, content: dict) -> str:
            msg_id = uuid.uuid4().hex
            conn.write_message(json.dumps({
                "header": {"msg_id": msg_id, "username": user.name, "session": session,
                           "msg_type": msg_type, "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [], "content": content,
            }))
            return msg_id

        lost = []  # what ended a connection's use: the kernel restarting or dying, the websocket closing

        async def replies(msg_id: str, wait: float):
            """The messages answering msg_id, until wait seconds pass without
            one, or the connection is lost (noted in lost)."""
            while True:
                try:
                    raw = await asyncio.wait_for(conn.read_message(), wait)
                except TimeoutError:
                    return
                if raw is None:
                    lost.append("the websocket closed")
                    return
                m = json.loads(raw)
                if m.get("msg_type") == "status" and m["content"].get("execution_state") in ("restarting", "dead"):
                    lost.append(f"the kernel went {m['content']['execution_state']}")
                    return
                if m.get("parent_header", {}).get("msg_id") == msg_id:
                    yield m

        out = []
        problem = ""
        try:
            async with asyncio.timeout(timeout):
                # kernel_info first, as JupyterLab does: a request sent before
                # the kernel's channels are connected goes unanswered; ask
                # again every 10 s for 30 s, on one websocket and then, if
                # that fails, on a second.
                ready = False
                for connection in range(2):
                    if conn is not None:
                        conn.close()
                    session = uuid.uuid4().hex  # a new session: nothing of the old connection is restored
                    # The server answers the upgrade once the kernel has
                    # answered it, or after its kernel_info_timeout (60 s).
                    try:
                        conn = await websocket_connect(HTTPRequest(
                            ws_url, headers={"Authorization": f"token {user.token}"},
                            connect_timeout=70, request_timeout=70))
                    except (HTTPClientError, OSError) as e:
                        conn = None
                        problem = f"websocket {connection + 1} of 2 not opened: {e}"
                        continue
                    lost.clear()
                    for _ in range(3):
                        info = send("kernel_info_request", {})
                        async for m in replies(info, 10):
                            if m.get("msg_type") == "kernel_info_reply":
                                ready = True
                                break
                        if ready or lost:
                            break
                    if ready:
                        break
                    problem = (lost[0] if lost else "no kernel_info reply in 30 s") + f" (websocket {connection + 1} of 2)"
                if not ready:
                    return kid, False, "", problem
                run = send("execute_request", {"code": code, "silent": False, "store_history": False,
                                               "user_expressions": {}, "allow_stdin": False,
                                               "stop_on_error": True})
                # Done when the reply (shell) has come and the kernel is idle
                # again (iopub): output may arrive after the reply.
                replied = idle = False
                async for m in replies(run, timeout):
                    t = m.get("msg_type")
                    if t == "stream":
                        out.append(m["content"]["text"])
                    elif t == "error":
                        out.append("\n".join(m["content"]["traceback"]))
                    elif t == "execute_reply":
                        replied = True
                    elif t == "status" and m["content"].get("execution_state") == "idle":
                        idle = True
                    if replied and idle:
                        break
                if lost:
                    raise RuntimeError(f"{user.name}'s kernel, while running the code: {lost[0]}")
        finally:
            if conn is not None:
                conn.close()
            await http("DELETE", base + f"api/kernels/{kid}", user.token)
        return kid, True, "".join(out), ""
