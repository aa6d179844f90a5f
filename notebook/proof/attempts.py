"""Ways a user can try to subvert the server. Each is done as the user from
a kernel of their running server; then the server is stopped and started
through the hub (with the variables the attempt passes, where it passes
any), and checked.

Every code-loading attempt plants the same payload: when it runs inside the
server process (not a kernel, not pip), it records that it ran and replaces
the hubwarden_notebook module with an empty extension, so the server starts
with the gate and the page-config enforcement gone.

An attempt that cannot succeed on this machine even without the lockdown
says why in `cannot_show` (measured here, e.g. a kernel setting), so the
table marks the row instead of counting it as held.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

MARKER = ".proof-ran-in-server"  # in the user's home
LAB_DIR_MARKER = "hubwarden-proof-lab-dir"

PAYLOAD = (
    "import os, sys, types\n"
    "if os.environ.get('JUPYTERHUB_API_TOKEN') and not os.environ.get('JPY_PARENT_PID'):\n"
    "    open(os.path.expanduser('~/.proof-ran-in-server'), 'a').write('%d\\n' % os.getpid())\n"
    "    m = types.ModuleType('hubwarden_notebook')\n"
    "    m._jupyter_server_extension_points = lambda: [{'module': 'hubwarden_notebook'}]\n"
    "    m._load_jupyter_server_extension = lambda app: None\n"
    "    sys.modules['hubwarden_notebook'] = m\n"
)

# A shared object for LD_PRELOAD that records that it ran in the server and
# removes its variable, so nothing in the environment shows it was loaded.
PRELOAD_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void proof(void) {
    const char *home = getenv("HOME");
    if (home && getenv("JUPYTERHUB_API_TOKEN") && !getenv("JPY_PARENT_PID")) {
        char p[4096];
        snprintf(p, sizeof p, "%s/.proof-ran-in-server", home);
        FILE *f = fopen(p, "a");
        if (f) { fprintf(f, "%d preload\n", (int)getpid()); fclose(f); }
    }
    unsetenv("LD_PRELOAD");
}
"""

DISABLE_JSON = '{"ServerApp": {"jpserver_extensions": {"hubwarden_notebook": false}}}'
# A Python config file: runs in the server when it loads its config.
CONFIG_PY = PAYLOAD + "\nc.ServerApp.jpserver_extensions = {'hubwarden_notebook': False}\n"

LABEXT = (
    "def labext(d, data):\n"
    "    d = os.path.join(d, 'hubwarden-proof-ext')\n"
    "    put(d + '/package.json', json.dumps({'name': 'hubwarden-proof-ext', 'version': '1.0.0', 'jupyterlab':"
    " {'_build': {'load': 'static/remoteEntry.js', 'extension': './extension'}}}))\n"
    "    put(d + '/static/remoteEntry.js', textwrap.dedent('''\n"
    "      var _JUPYTERLAB = window._JUPYTERLAB = window._JUPYTERLAB || {};\n"
    "      _JUPYTERLAB['hubwarden-proof-ext'] = {init: function () {}, get: function () { return Promise.resolve(function () {\n"
    "        return {__esModule: true, default: [{id: 'hubwarden-proof-ext:plugin', autoStart: true, activate: function (app) {\n"
    "          app.commands.addCommand('proof:download', {label: 'Download (proof)', execute: function () {}});\n"
    "          app.contextMenu.addItem({command: 'proof:download', selector: '.jp-DirListing-item', rank: 1});\n"
    "        }}]};\n"
    "      }); }};\n"
    "      '''))\n"
    "    shutil.copy(data, d + '/static/data.csv')\n"
    "def kernelspec(d, data):\n"
    "    d = os.path.join(d, 'proofk')\n"
    "    put(d + '/kernel.json', json.dumps({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',"
    " '{connection_file}'], 'display_name': 'proof', 'language': 'python'}))\n"
    "    shutil.copy(data, d + '/logo-64x64.png')\n"
)

PRELUDE = (
    "import os, sys, site, json, shutil, subprocess, sysconfig, tempfile, textwrap\n"
    "H = os.path.expanduser('~')\nS = site.getusersitepackages()\nU = os.environ['JUPYTERHUB_USER']\n"
    f"PAYLOAD = {PAYLOAD!r}\nDISABLE_JSON = {DISABLE_JSON!r}\nCONFIG_PY = {CONFIG_PY!r}\n"
    f"PRELOAD_C = {PRELOAD_C!r}\nLAB_DIR_MARKER = {LAB_DIR_MARKER!r}\n"
    "def put(path, text):\n"
    "    os.makedirs(os.path.dirname(path), exist_ok=True)\n"
    "    open(path, 'w').write(text)\n"
    "def pip_user(name, files):\n"
    "    d = tempfile.mkdtemp()\n"
    "    for rel, text in files.items():\n"
    "        put(os.path.join(d, rel), text)\n"
    "    put(os.path.join(d, 'setup.py'), 'from setuptools import setup, find_packages\\n'\n"
    "        f'setup(name={name!r}, version=\"99\", packages=find_packages(), include_package_data=True,'\n"
    "        ' package_data={\"\": [\"*\", \"*/*\", \"*/*/*\", \"*/*/*/*\"]})\\n')\n"
    # --ignore-installed: pip would otherwise say the package is already
    # satisfied by the environment's copy; a user who wants theirs first
    # asks for it.
    "    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--user', '--no-deps', '--no-index',\n"
    "        '--no-build-isolation', '--ignore-installed', '--no-warn-script-location', '--quiet', d],"
    " capture_output=True, text=True)\n"
    "    print('pip:', r.returncode, r.stderr[-300:])\n"
    "    print('user site:', sorted(os.listdir(S)) if os.path.isdir(S) else None)\n"
    + LABEXT
)


def yama_ptrace_scope() -> str | None:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = f.read().strip()
    except OSError:
        return None  # no Yama: same-uid processes may attach to each other
    if scope != "0":
        return (f"Yama ptrace_scope={scope}: a kernel (a child of the server) may not attach to its "
                "parent, with or without the lockdown")
    return None


def no_compiler() -> str | None:
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler (cc) here for the user to build the shared object"
    return None


@dataclass
class Attempt:
    id: str
    title: str
    apply: str  # Python run in a kernel, as the user
    start_env: dict = field(default_factory=dict)  # variables passed when starting ({user}, ~ expanded)
    probes: tuple[str, ...] = ()  # extra checks: "labextension", "kernelspec", "ptrace"
    restart: bool = True
    cannot_show: Callable[[], str | None] = lambda: None  # why the control may not succeed here
    ci: bool = False  # in the CI subset (make ci)
    browser: bool = False  # checked in the browser with --browser some (the browser check's control)


ATTEMPTS = [
    Attempt(
        "pip-user-jupyter-server",
        "pip install --user of a modified jupyter_server",
        "import jupyter_server\nsrc = os.path.dirname(jupyter_server.__file__)\n"
        "d = tempfile.mkdtemp()\nshutil.copytree(src, os.path.join(d, 'jupyter_server'),"
        " ignore=shutil.ignore_patterns('__pycache__'))\n"
        "files = {}\nfor root, _, fs in os.walk(d):\n"
        "    for f in fs:\n        p = os.path.join(root, f)\n"
        "        try: files[os.path.relpath(p, d)] = open(p).read()\n"
        "        except UnicodeDecodeError: pass\n"
        "files['jupyter_server/__init__.py'] = PAYLOAD + files['jupyter_server/__init__.py']\n"
        "pip_user('jupyter_server', files)\n",
    ),
    Attempt(
        "pip-user-extension",
        "pip install --user of a hollow hubwarden_notebook",
        "pip_user('hubwarden_notebook', {'hubwarden_notebook/__init__.py': PAYLOAD.replace(\"if os.environ\", "
        "\"if True or os.environ\") + "
        "'\\n_jupyter_server_extension_points = lambda: [{\"module\": \"hubwarden_notebook\"}]\\n"
        "_load_jupyter_server_extension = lambda app: None\\n'})\n",
        ci=True,
    ),
    Attempt(
        "user-site-pth",
        "a .pth file in the user site-packages",
        "put(os.path.join(S, 'zz-proof.pth'), 'import os; exec(' + repr(PAYLOAD) + ')\\n')\n",
        ci=True,
    ),
    Attempt(
        "usercustomize",
        "usercustomize.py in the user site-packages",
        "put(os.path.join(S, 'usercustomize.py'), PAYLOAD)\n",
    ),
    Attempt(
        "jupyter-server-config-py",
        "~/.jupyter/jupyter_server_config.py",
        "put(H + '/.jupyter/jupyter_server_config.py', CONFIG_PY)\n",
        ci=True,
    ),
    Attempt(
        "jupyter-server-config-json",
        "~/.jupyter/jupyter_server_config.json and ~/.local/etc/jupyter/jupyter_server_config.d/",
        "put(H + '/.jupyter/jupyter_server_config.json', DISABLE_JSON)\n"
        "put(H + '/.local/etc/jupyter/jupyter_server_config.d/zz-proof.json', DISABLE_JSON)\n",
    ),
    Attempt(
        "labconfig-page-config",
        "~/.jupyter/labconfig/page_config.json re-enabling and unlocking the download plugins",
        "ids = ['@jupyterlab/docmanager-extension:download', '@jupyterlab/docmanager-extension:open-browser-tab',"
        " '@jupyterlab/filebrowser-extension:download', '@jupyterlab/filebrowser-extension:open-browser-tab',"
        " '@jupyterlab/notebook-extension:export']\n"
        "put(H + '/.jupyter/labconfig/page_config.json', json.dumps({'disabledExtensions': {i: False for i in ids},"
        " 'lockedExtensions': {i: False for i in ids}}))\n",
        ci=True,
        browser=True,
    ),
    Attempt(
        "user-labextension",
        "a labextension in ~/.local/share/jupyter/labextensions (adds a Download entry; serves a file "
        "without authentication)",
        "labext(H + '/.local/share/jupyter/labextensions', H + '/data.csv')\n",
        probes=("labextension",),
        ci=True,
        browser=True,
    ),
    Attempt(
        "user-kernelspec",
        "a kernelspec in ~/.local/share/jupyter/kernels whose logo is the data",
        "kernelspec(H + '/.local/share/jupyter/kernels', H + '/data.csv')\n",
        probes=("kernelspec",),
    ),
    Attempt(
        "write-environment",
        "a .pth file written into the server's environment (site-packages)",
        "p = os.path.join(sysconfig.get_paths()['purelib'], 'zz-proof.pth')\n"
        "try:\n    put(p, 'import os; exec(' + repr(PAYLOAD) + ')\\n'); print('wrote', p)\n"
        "except OSError as e:\n    print('refused', p, e)\n",
        ci=True,
    ),
    Attempt(
        "write-config-data-paths",
        "every Jupyter config and data path outside the home: a config disabling the extension, a labextension",
        "from jupyter_core.paths import jupyter_config_path, jupyter_path\n"
        "done = []\n"
        "for p in jupyter_config_path():\n"
        "    if p.startswith(H): continue\n"
        "    try: put(p + '/jupyter_server_config.d/zz-proof.json', DISABLE_JSON); done.append(p)\n"
        "    except OSError: pass\n"
        "for p in jupyter_path():\n"
        "    if p.startswith(H): continue\n"
        "    try: labext(p + '/labextensions', H + '/data.csv'); done.append(p)\n"
        "    except OSError: pass\n"
        "print('writable:', done)\n",
        probes=("labextension",),
    ),
    Attempt(
        "env-pythonpath",
        "PYTHONPATH (with a sitecustomize.py) passed when starting the server",
        "put(H + '/proofpath/sitecustomize.py', PAYLOAD)\n",
        start_env={"PYTHONPATH": "~/proofpath"},
    ),
    Attempt(
        "env-jupyter-config-path",
        "JUPYTER_CONFIG_PATH to a directory the user writes (jupyter_server_config.py and .json), passed when "
        "starting the server",
        "d = '/tmp/proof-cfg-' + U\nput(d + '/jupyter_server_config.json', DISABLE_JSON)\n"
        "put(d + '/jupyter_server_config.py', CONFIG_PY)\n",
        start_env={"JUPYTER_CONFIG_PATH": "/tmp/proof-cfg-{user}"},
        ci=True,
    ),
    Attempt(
        "env-jupyter-config-dir",
        "JUPYTER_CONFIG_DIR to a directory the user writes (jupyter_server_config.py), passed when starting",
        "put('/tmp/proof-cfgdir-' + U + '/jupyter_server_config.py', CONFIG_PY)\n",
        start_env={"JUPYTER_CONFIG_DIR": "/tmp/proof-cfgdir-{user}"},
    ),
    Attempt(
        "env-jupyter-no-config",
        "JUPYTER_NO_CONFIG=1 passed when starting (no config file is read, the extension's enabling one included)",
        "",
        start_env={"JUPYTER_NO_CONFIG": "1"},
        ci=True,
    ),
    Attempt(
        "env-jupyter-path",
        "JUPYTER_PATH to a directory the user writes (a labextension, a kernelspec whose logo is the data), "
        "passed when starting",
        "d = '/tmp/proof-path-' + U\nlabext(d + '/labextensions', H + '/data.csv')\n"
        "kernelspec(d + '/kernels', H + '/data.csv')\n",
        start_env={"JUPYTER_PATH": "/tmp/proof-path-{user}"},
        probes=("labextension", "kernelspec"),
    ),
    Attempt(
        "env-jupyter-data-dir",
        "JUPYTER_DATA_DIR to a directory the user writes (a labextension), passed when starting",
        "labext('/tmp/proof-data-' + U + '/labextensions', H + '/data.csv')\n",
        start_env={"JUPYTER_DATA_DIR": "/tmp/proof-data-{user}"},
        probes=("labextension",),
    ),
    Attempt(
        "env-jupyterlab-dir",
        "JUPYTERLAB_DIR to the user's copy of JupyterLab's application directory (its page template changed), "
        "passed when starting",
        "from jupyterlab.commands import get_app_dir\nsrc = get_app_dir()\nd = '/tmp/proof-labdir-' + U\n"
        "os.makedirs(d + '/static')\n"
        "for n in os.listdir(src):\n"
        "    if n != 'static': os.symlink(os.path.join(src, n), os.path.join(d, n))\n"
        "for n in os.listdir(src + '/static'):\n"
        "    if n != 'index.html': os.symlink(os.path.join(src, 'static', n), os.path.join(d, 'static', n))\n"
        "put(d + '/static/index.html', open(src + '/static/index.html').read().replace('<head>', "
        "'<head><!-- ' + LAB_DIR_MARKER + ' -->', 1))\n",
        start_env={"JUPYTERLAB_DIR": "/tmp/proof-labdir-{user}"},
    ),
    Attempt(
        "env-home-root",
        "HOME=/ passed when starting, on a deployment with disable_user_config (which then drops every config "
        "path under HOME: all of them)",
        "",
        # (JUPYTER_RUNTIME_DIR: the server writes its runtime files under HOME.)
        start_env={"HOME": "/", "JUPYTERHUB_DISABLE_USER_CONFIG": "1", "JUPYTER_RUNTIME_DIR": "/tmp/proof-rt-{user}"},
    ),
    Attempt(
        "env-disable-user-config-off",
        "JUPYTERHUB_DISABLE_USER_CONFIG=0 passed when starting, with ~/.jupyter config disabling the extension",
        "put(H + '/.jupyter/jupyter_server_config.json', DISABLE_JSON)\n",
        start_env={"JUPYTERHUB_DISABLE_USER_CONFIG": "0"},
    ),
    Attempt(
        "env-ld-preload",
        "LD_PRELOAD of a shared object the user built (it records that it ran and unsets its variable), passed "
        "when starting",
        "d = H + '/.proofpre'\nput(d + '/p.c', PRELOAD_C)\n"
        "r = subprocess.run(['cc', '-shared', '-fPIC', '-o', d + '/p.so', d + '/p.c'], capture_output=True, text=True)\n"
        "print('cc:', r.returncode, r.stderr[-300:])\n",
        start_env={"LD_PRELOAD": "~/.proofpre/p.so"},
        cannot_show=no_compiler,
        ci=True,
    ),
    Attempt(
        "ptrace-server",
        "open the running server's memory for writing (/proc/<server>/mem, what ptrace-based injection needs)",
        "",
        probes=("ptrace",),
        restart=False,
        cannot_show=yama_ptrace_scope,
        ci=True,
    ),
]


def expand(value: str, user_name: str, home: str) -> str:
    """{user} and a leading ~ in a variable an attempt passes."""
    value = value.replace("{user}", user_name)
    if value.startswith("~"):
        value = home + value[1:]
    return value


def cleanup_paths(user_name: str) -> list[str]:
    """What the attempts make outside the user's home."""
    return [f"/tmp/proof-{kind}-{user_name}" for kind in ("cfg", "cfgdir", "path", "data", "labdir", "rt")]


def remove_outside_home(user_name: str) -> None:
    for p in cleanup_paths(user_name):
        if os.path.lexists(p):
            shutil.rmtree(p, ignore_errors=True)
