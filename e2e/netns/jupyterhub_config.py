# JupyterHub config of the hubwarden e2e bed (written by the harness, see bed.go).
# JupyterHub 5.5.0 and configurable-http-proxy run in the proxy netns; every
# user's jupyterhub-singleuser (jupyter-server 2.19.0 with JupyterLab 4.5.8, the
# z2jh 4.4 user image's pins) is spawned into that user's "pod" netns by
# NetnsSpawner, like a z2jh user pod. All inputs come from E2E_* variables.
import ctypes, json, os
from jupyterhub.spawner import LocalProcessSpawner

c = get_config()  # noqa

PODS = json.loads(os.environ["E2E_PODS"])   # {"user": {"netns": "...", "ip": "198.18.0.6"}}
HUB_IP = os.environ["E2E_HUB_IP"]
SINGLEUSER = os.environ["E2E_SINGLEUSER_VENV"]   # /opt/hubwarden/venv/singleuser

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
MS_BIND, MS_REC, MS_SLAVE, MNT_DETACH = 4096, 16384, 1 << 19, 2
PR_SET_NO_NEW_PRIVS = 38


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


class NetnsSpawner(LocalProcessSpawner):
    """LocalProcessSpawner whose child joins the user's pod netns before dropping root.

    ip netns exec cannot wrap the command: LocalProcessSpawner setuid()s first.
    """

    def _pod(self):
        return PODS[self.user.name]

    async def start(self):
        self.ip = self._pod()["ip"]           # the proxy routes to http://POD_IP:8888
        return await super().start()

    def make_preexec_fn(self, name):
        drop_privs = super().make_preexec_fn(name)
        ns = self._pod()["netns"]
        path = f"/run/netns/{ns}"
        resolv = f"/etc/netns/{ns}/resolv.conf"

        def preexec():
            fd = os.open(path, os.O_RDONLY)
            _check(_libc.setns(fd, CLONE_NEWNET), "setns " + path)   # os.setns needs Python 3.12
            os.close(fd)
            # a private mount ns like `ip netns exec`: the pod's /sys and resolv.conf
            _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "make / rslave")
            _check(_libc.umount2(b"/sys", MNT_DETACH), "umount /sys")
            _check(_libc.mount(ns.encode(), b"/sys", b"sysfs", 0, None), "mount sysfs")
            if os.path.exists(resolv):
                _check(_libc.mount(resolv.encode(), b"/etc/resolv.conf", None, MS_BIND, None), "bind resolv.conf")
            drop_privs()
            # z2jh's singleuser.allowPrivilegeEscalation: false (its default):
            # Kubernetes starts the notebook container with no_new_privs, so
            # no setuid program or file capability raises a user's process.
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")

        return preexec


c.JupyterHub.spawner_class = NetnsSpawner
c.Spawner.port = 8888
# The user image's command, as z2jh runs it (its default UI is JupyterLab:
# jupyterhub-singleuser takes /lab from the jupyterlab server extension).
c.Spawner.cmd = [f"{SINGLEUSER}/bin/jupyterhub-singleuser"]
# The user owns their server's config (~/.jupyter), so an attacker lifts
# jupyter-server's IOPub output limits (1 MB/s, 1000 msg/s by default); so do
# we, on both pods, to measure what the network alone lets out. jupyter-server
# 2 moved them from ServerApp to ZMQChannelsWebsocketConnection.
c.Spawner.args = ["--ip=0.0.0.0",
                  "--ZMQChannelsWebsocketConnection.iopub_data_rate_limit=1e12",
                  "--ZMQChannelsWebsocketConnection.iopub_msg_rate_limit=1e12"]
c.Spawner.environment = {
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    # The user image's environment first, like its PATH in the image.
    "PATH": f"{SINGLEUSER}/bin:/usr/local/bin:/usr/bin:/bin",
}
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90

c.JupyterHub.hub_bind_url = f"http://{HUB_IP}:8081"
c.JupyterHub.hub_connect_url = f"http://{HUB_IP}:8081"
c.JupyterHub.bind_url = "http://:8000"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:8001"
c.ConfigurableHTTPProxy.command = os.environ["E2E_CHP"].split()

c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = os.environ["E2E_PASSWORD"]
c.Authenticator.allowed_users = set(PODS)

c.JupyterHub.services = [{"name": "e2e", "api_token": os.environ["E2E_SERVICE_TOKEN"]}]
c.JupyterHub.load_roles = [{"name": "e2e-admin", "services": ["e2e"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens", "read:users"]}]

c.JupyterHub.db_url = "sqlite:///jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "jupyterhub_cookie_secret"
c.JupyterHub.cleanup_servers = True
