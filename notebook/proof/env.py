"""The single-user environments of the proof: one locked as the hardened
image does it, one without the lockdown (the way many images ship: the
environment owned by the notebook user, as Jupyter Docker Stacks' /opt/conda
is, the server started as plain jupyterhub-singleuser, user config on, the
download plugins disabled with a labconfig file).

Both are small virtual environments that behave like a prefix install
(include-system-site-packages, so the user site-packages is enabled and
comes first, as in /usr/local or conda) and take the hash-locked single-user
stack (jupyter-server 2.19.0, JupyterLab 4.5.8, JupyterHub 5.5.0) from the
root-owned /opt/hubwarden/venv/singleuser through a .pth file, so nothing is
downloaded and that environment is never changed. The extension is
installed into each with pip, as an image build would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

BASE = os.environ.get("HUBWARDEN_SINGLEUSER_VENV", "/opt/hubwarden/venv/singleuser")
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"
DOWNLOAD_PLUGINS = [
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/docmanager-extension:open-browser-tab",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
    "@jupyterlab/notebook-extension:export",
]


@dataclass
class Install:
    name: str  # "locked" or "open"
    prefix: str
    cmd: list[str]
    env: dict[str, str]

    @property
    def site(self) -> str:
        return os.path.join(self.prefix, "lib", PYVER, "site-packages")


def _run(*argv: str, **kw) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)


def build(prefix: str, src: str, locked: bool, owner: tuple[int, int] | None) -> Install:
    base_site = os.path.join(BASE, "lib", PYVER, "site-packages")
    if not os.path.isdir(base_site):
        raise SystemExit(f"proof: no single-user environment at {BASE} (run make setup)")
    _run("/usr/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages", prefix)
    inst = Install("locked" if locked else "open", prefix, [], {})
    with open(os.path.join(inst.site, "00-hubwarden-proof-base.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({base_site!r})\n")
    py = os.path.join(prefix, "bin", "python")
    # The extension, as an image build installs it (its data file enables it).
    build_src = os.path.join(os.path.dirname(prefix), f"src-{inst.name}")
    shutil.copytree(src, build_src, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests", "proof"))
    _run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", build_src)
    shutil.rmtree(build_src)
    # What the base environment's packages enable and ship (JupyterLab's app
    # directory, extensions), and the native kernel, as in the image.
    confd = os.path.join(prefix, "etc", "jupyter", "jupyter_server_config.d")
    os.makedirs(confd, exist_ok=True)
    base_confd = os.path.join(BASE, "etc", "jupyter", "jupyter_server_config.d")
    for name in os.listdir(base_confd):
        shutil.copy(os.path.join(base_confd, name), confd)
    share = os.path.join(prefix, "share", "jupyter")
    os.makedirs(share, exist_ok=True)
    for name in ("lab", "labextensions", "nbconvert"):
        os.symlink(os.path.join(BASE, "share", "jupyter", name), os.path.join(share, name))
    _run(py, "-m", "ipykernel", "install", "--sys-prefix")
    etc = os.path.join(prefix, "etc", "jupyter")
    if locked:
        inst.cmd = [py, "-I", "-m", "hubwarden_notebook.singleuser"]
        for root, dirs, files in os.walk(prefix):
            for n in dirs + files:
                p = os.path.join(root, n)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode & ~0o022)
    else:
        # The usual measures without the lockdown: the plugins disabled and
        # locked in a labconfig file, the extension's own enforcement of
        # them off, no start-up check, no process protection.
        with open(os.path.join(etc, "jupyter_server_config.json"), "w") as f:
            json.dump({"HubwardenNotebook": {"lockdown_check": False, "disabled_plugins": [],
                                             "protect_process": False}}, f)
        os.makedirs(os.path.join(etc, "labconfig"), exist_ok=True)
        with open(os.path.join(etc, "labconfig", "page_config.json"), "w") as f:
            json.dump({"disabledExtensions": {p: True for p in DOWNLOAD_PLUGINS},
                       "lockedExtensions": {p: True for p in DOWNLOAD_PLUGINS}}, f)
        script = os.path.join(prefix, "bin", "jupyterhub-singleuser")
        with open(script, "w") as f:
            f.write(f"#!{py}\nimport sys\nfrom jupyterhub.singleuser import main\nsys.exit(main())\n")
        os.chmod(script, 0o755)
        inst.cmd = [script]
        # A user-owned virtual environment would rank its own config above
        # ~/.jupyter (jupyter_core's prefer_environment_over_user); Jupyter
        # Docker Stacks' conda base environment does not. Model the latter.
        inst.env = {"JUPYTER_PREFER_ENV_PATH": "0"}
        if owner:  # Jupyter Docker Stacks: the environment belongs to the user
            for root, dirs, files in os.walk(prefix):
                for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                    os.lchown(n, *owner)
    return inst
