"""The single-user installs of the proof: one locked as the hardened image
does it, one without the lockdown (the way many images ship: the
environment owned by the notebook user, as Jupyter Docker Stacks'
/opt/conda is, the server started as plain jupyterhub-singleuser, user
config on, the download plugins disabled with a labconfig file).

Both are prefix installs, as /usr/local in the z2jh sample image (Python's
official image) and /opt/conda are: not virtual environments, whose own
packages Python puts before the user's site-packages. A prefix is Debian's
Python binary copied into <prefix>/bin (Python finds its prefix from where
its binary is), the standard library linked into <prefix>/lib/python3.X,
and the site directory <prefix>/local/lib/python3.X/dist-packages (Debian's
Python, like upstream's /usr/local, puts the user's site-packages first).
The hash-locked single-user stack (jupyter-server 2.19.0, JupyterLab 4.5.8,
JupyterHub 5.5.0) comes from the root-owned /opt/hubwarden/venv/singleuser
through a .pth file in that site directory, so nothing is downloaded and that
environment is never changed. The extension is installed into each with
pip, as an image build would.

The open install is built once and copied for each user (`clone`): every
user of such an image has a writable environment of their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

BASE = os.environ.get("HWNB_SINGLEUSER_VENV", "/opt/hubwarden/venv/singleuser")
PYVER = f"python{sys.version_info.major}.{sys.version_info.minor}"
SYSTEM_PYTHON = f"/usr/bin/{PYVER}"
SYSTEM_STDLIB = f"/usr/lib/{PYVER}"
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
    def python(self) -> str:
        return os.path.join(self.prefix, "bin", PYVER)

    @property
    def site(self) -> str:
        """The site directory: sysconfig's purelib for this prefix."""
        return os.path.join(self.prefix, "local", "lib", PYVER, "dist-packages")


def _run(*argv: str, **kw) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, **kw)


def make_prefix(prefix: str) -> None:
    """A Python prefix: the interpreter, the standard library, a site directory."""
    os.makedirs(os.path.join(prefix, "bin"))
    shutil.copy2(SYSTEM_PYTHON, os.path.join(prefix, "bin", PYVER))
    for alias in ("python3", "python"):
        os.symlink(PYVER, os.path.join(prefix, "bin", alias))
    lib = os.path.join(prefix, "lib", PYVER)
    os.makedirs(lib)
    # Debian's EXTERNALLY-MANAGED marker stays out: this prefix is not
    # Debian's (pip installs into it, as into /usr/local or /opt/conda).
    for name in os.listdir(SYSTEM_STDLIB):
        if name not in ("site-packages", "dist-packages", "EXTERNALLY-MANAGED"):
            os.symlink(os.path.join(SYSTEM_STDLIB, name), os.path.join(lib, name))


def build(prefix: str, src: str, locked: bool) -> Install:
    base_site = os.path.join(BASE, "lib", PYVER, "site-packages")
    if not os.path.isdir(base_site):
        raise SystemExit(f"proof: no single-user environment at {BASE} (run make setup)")
    make_prefix(prefix)
    inst = Install("locked" if locked else "open", prefix, [], {})
    py = inst.python
    out = subprocess.run([py, "-I", "-c", "import sys, sysconfig; print(sys.prefix); "
                          "print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True)
    if out.stdout.split() != [prefix, inst.site]:
        raise SystemExit(f"proof: {py} is not a prefix install at {prefix}: {out.stdout.split()}")
    os.makedirs(inst.site)
    with open(os.path.join(inst.site, "00-hubwarden-proof-base.pth"), "w") as f:
        f.write(f"import site; site.addsitedir({base_site!r})\n")
    # The extension, as an image build installs it (its data file enables it).
    build_src = os.path.join(os.path.dirname(prefix), f"src-{inst.name}")
    shutil.copytree(src, build_src, ignore=shutil.ignore_patterns("build", "*.egg-info", "tests", "proof"))
    _run(py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", build_src)
    shutil.rmtree(build_src)
    # Debian's Python installs data files under <prefix>/local (its
    # /usr/local convention); Jupyter reads <prefix>/etc/jupyter and
    # <prefix>/share/jupyter. Upstream Python installs them there directly.
    etc = os.path.join(prefix, "etc", "jupyter")
    shutil.copytree(os.path.join(prefix, "local", "etc", "jupyter"), etc)
    # What the base environment's packages enable and ship (JupyterLab's app
    # directory, extensions), and the native kernel, as in the image.
    confd = os.path.join(etc, "jupyter_server_config.d")
    base_confd = os.path.join(BASE, "etc", "jupyter", "jupyter_server_config.d")
    for name in os.listdir(base_confd):
        shutil.copy(os.path.join(base_confd, name), confd)
    share = os.path.join(prefix, "share", "jupyter")
    os.makedirs(share, exist_ok=True)
    for name in ("lab", "labextensions", "nbconvert"):
        os.symlink(os.path.join(BASE, "share", "jupyter", name), os.path.join(share, name))
    _run(py, "-m", "ipykernel", "install", "--sys-prefix")
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
    return inst


def chown_tree(prefix: str, owner: tuple[int, int]) -> None:
    for root, dirs, files in os.walk(prefix):
        for n in [root] + [os.path.join(root, x) for x in dirs + files]:
            os.lchown(n, *owner)


def clone(template: Install, prefix: str, owner: tuple[int, int]) -> Install:
    """A copy of the open install at prefix, owned by owner (Jupyter Docker
    Stacks: the environment belongs to the user): the template's path is
    rewritten in every file that names it (scripts, pip's records),
    symbolic links kept, bytecode left out (it names its source's path in a
    length-prefixed string; Python compiles it again)."""
    if template.name != "open":
        raise ValueError("only the open install is copied per user")
    shutil.copytree(template.prefix, prefix, symlinks=True, ignore=shutil.ignore_patterns("*.pyc"))
    old, new = template.prefix.encode(), prefix.encode()
    for root, _, files in os.walk(prefix):
        for n in files:
            p = os.path.join(root, n)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                data = f.read()
            if old in data:
                with open(p, "wb") as f:
                    f.write(data.replace(old, new))
    chown_tree(prefix, owner)
    return Install("open", prefix, [c.replace(template.prefix, prefix) for c in template.cmd], dict(template.env))
