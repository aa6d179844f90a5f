"""hubwarden_notebook.singleuser: the variables it fixes, and the
command-line config that keeps the extension and its start-up check on
whatever a config file says, through JupyterHub 5.5.0's own single-user
start-up (JupyterHubSingleUser.initialize_server) in a fresh interpreter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hubwarden_notebook.singleuser import FIXED_ENV, fix_env


def test_fix_env():
    env = {
        "JUPYTERHUB_DISABLE_USER_CONFIG": "0",
        "JUPYTERHUB_SINGLEUSER_APP": "some.module.App",
        "JUPYTERHUB_SINGLEUSER_TEST_EXTENSION": "1",
        "JUPYTERHUB_USER": "u",
    }
    changed = fix_env(env)
    assert env == {"JUPYTERHUB_DISABLE_USER_CONFIG": "1", "JUPYTERHUB_SINGLEUSER_EXTENSION": "1",
                   "JUPYTERHUB_USER": "u"}
    assert len(changed) == 3, changed
    assert fix_env(env) == []
    assert set(FIXED_ENV) >= {"JUPYTERHUB_DISABLE_USER_CONFIG", "JUPYTERHUB_SINGLEUSER_APP"}


INIT = """
import sys
from hubwarden_notebook.singleuser import FORCED_ARGS
from jupyterhub.singleuser.extension import JupyterHubSingleUser
argv = list(FORCED_ARGS) if sys.argv[1] == "forced" else []
app = JupyterHubSingleUser.initialize_server(argv=argv)
print("EXTENSIONS", sorted(k for k, v in app.jpserver_extensions.items() if v))
"""


class HubAPI(BaseHTTPRequestHandler):
    """The one hub request the single-user server makes while it
    initialises: GET /hub/api, to compare versions."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", "5.5.0")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"version": "5.5.0"}')

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_api():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), HubAPI)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hub/api"
    srv.shutdown()
    srv.server_close()


def init_singleuser(tmp_path, hub_api: str, forced: bool) -> subprocess.CompletedProcess:
    """JupyterHub's single-user server initialised (not started) with a
    config path whose config turns the extension and its check off."""
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"jpserver_extensions": {"hubwarden_notebook": False}},
        "HubwardenNotebook": {"lockdown_check": False},
    }))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "HOME": str(tmp_path),
        "JUPYTER_CONFIG_PATH": str(cfg),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}/user/u/",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/u/",
        "JUPYTERHUB_API_URL": hub_api,
        "JUPYTERHUB_API_TOKEN": "t" * 32,
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-u",
        "JUPYTERHUB_USER": "u",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/u/oauth_callback",
        "JUPYTERHUB_DISABLE_USER_CONFIG": "1",
    }
    return subprocess.run([sys.executable, "-c", INIT, "forced" if forced else "plain"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_config_cannot_turn_the_extension_or_its_check_off(tmp_path, hub_api):
    r = init_singleuser(tmp_path, hub_api, forced=True)
    # The extension loaded and ran its check although the config said
    # neither: the check refuses (these tests run as root).
    assert r.returncode != 0, r.stdout + r.stderr
    assert "hubwarden_notebook: the server refuses to start" in r.stderr, r.stderr[-2000:]
    assert "the server runs as root" in r.stderr


def test_control_config_turns_the_extension_off_without_the_forced_args(tmp_path, hub_api):
    r = init_singleuser(tmp_path, hub_api, forced=False)
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("EXTENSIONS"))
    assert "jupyterhub" in line and "hubwarden_notebook" not in line, line
