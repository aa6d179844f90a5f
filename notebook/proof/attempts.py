"""Ways a user can try to subvert the server, each done as the user from a
kernel of their running server, then a restart through the hub.

Every code-loading attempt plants the same payload: when it runs inside the
server process (not a kernel, not pip), it records that it ran and replaces
the hubwarden_notebook module with an empty extension, so the server starts
with the gate and the page-config enforcement gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MARKER = "~/.proof-ran-in-server"

PAYLOAD = (
    "import os, sys, types\n"
    "if os.environ.get('JUPYTERHUB_API_TOKEN') and not os.environ.get('JPY_PARENT_PID'):\n"
    "    open(os.path.expanduser('~/.proof-ran-in-server'), 'a').write('%d\\n' % os.getpid())\n"
    "    m = types.ModuleType('hubwarden_notebook')\n"
    "    m._jupyter_server_extension_points = lambda: [{'module': 'hubwarden_notebook'}]\n"
    "    m._load_jupyter_server_extension = lambda app: None\n"
    "    sys.modules['hubwarden_notebook'] = m\n"
)

DISABLE_JSON = '{"ServerApp": {"jpserver_extensions": {"hubwarden_notebook": false}}}'

PRELUDE = (
    "import os, sys, site, json, shutil, subprocess, sysconfig, tempfile, textwrap\n"
    "H = os.path.expanduser('~')\nS = site.getusersitepackages()\n"
    f"PAYLOAD = {PAYLOAD!r}\nDISABLE_JSON = {DISABLE_JSON!r}\n"
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
    "    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '--user', '--no-deps', '--no-index',\n"
    "        '--no-build-isolation', '--ignore-installed', '--no-warn-script-location', '--quiet', d], capture_output=True, text=True)\n"
    "    print('pip:', r.returncode, r.stderr[-300:])\n"
)


@dataclass
class Attempt:
    id: str
    title: str
    apply: str  # Python run in a kernel, as the user
    undo: str
    start_env: dict = field(default_factory=dict)  # variables the user passes when starting
    probe: str = ""  # extra check: "labextension", "kernelspec", "ptrace"
    restart: bool = True


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
        "subprocess.run([sys.executable, '-m', 'pip', 'uninstall', '-y', '-q', 'jupyter_server'], capture_output=True)\n"
        "[shutil.rmtree(os.path.join(S, n), True) for n in os.listdir(S) if n.startswith('jupyter_server')] if os.path.isdir(S) else None\n",
    ),
    Attempt(
        "pip-user-extension",
        "pip install --user of a hollow hubwarden_notebook",
        "pip_user('hubwarden_notebook', {'hubwarden_notebook/__init__.py': PAYLOAD.replace(\"if os.environ\", \"if True or os.environ\") + "
        "'\\n_jupyter_server_extension_points = lambda: [{\"module\": \"hubwarden_notebook\"}]\\n"
        "_load_jupyter_server_extension = lambda app: None\\n'})\n",
        "[shutil.rmtree(os.path.join(S, n), True) for n in os.listdir(S) if n.startswith('hubwarden_notebook')] if os.path.isdir(S) else None\n",
    ),
    Attempt(
        "user-site-pth",
        "a .pth file in the user site-packages",
        "put(os.path.join(S, 'zz-proof.pth'), 'import os; exec(' + repr(PAYLOAD) + ')\\n')\n",
        "os.remove(os.path.join(S, 'zz-proof.pth'))\n",
    ),
    Attempt(
        "usercustomize",
        "usercustomize.py in the user site-packages",
        "put(os.path.join(S, 'usercustomize.py'), PAYLOAD)\n",
        "os.remove(os.path.join(S, 'usercustomize.py'))\n",
    ),
    Attempt(
        "jupyter-server-config-py",
        "~/.jupyter/jupyter_server_config.py",
        "put(H + '/.jupyter/jupyter_server_config.py', PAYLOAD + "
        "'\\nc.ServerApp.jpserver_extensions = {\"hubwarden_notebook\": False}\\n')\n",
        "os.remove(H + '/.jupyter/jupyter_server_config.py')\n",
    ),
    Attempt(
        "jupyter-server-config-json",
        "~/.jupyter/jupyter_server_config.json and ~/.local/etc/jupyter/…config.d",
        "put(H + '/.jupyter/jupyter_server_config.json', DISABLE_JSON)\n"
        "put(H + '/.local/etc/jupyter/jupyter_server_config.d/zz-proof.json', DISABLE_JSON)\n",
        "os.remove(H + '/.jupyter/jupyter_server_config.json')\n"
        "os.remove(H + '/.local/etc/jupyter/jupyter_server_config.d/zz-proof.json')\n",
    ),
    Attempt(
        "labconfig-page-config",
        "~/.jupyter/labconfig/page_config.json re-enabling the plugins",
        "ids = ['@jupyterlab/docmanager-extension:download', '@jupyterlab/docmanager-extension:open-browser-tab',"
        " '@jupyterlab/filebrowser-extension:download', '@jupyterlab/filebrowser-extension:open-browser-tab',"
        " '@jupyterlab/notebook-extension:export']\n"
        "put(H + '/.jupyter/labconfig/page_config.json', json.dumps({'disabledExtensions': {i: False for i in ids},"
        " 'lockedExtensions': {i: False for i in ids}}))\n",
        "os.remove(H + '/.jupyter/labconfig/page_config.json')\n",
    ),
    Attempt(
        "user-labextension",
        "a labextension in ~/.local/share/jupyter/labextensions (adds a Download entry; serves a file unauthenticated)",
        "d = H + '/.local/share/jupyter/labextensions/hubwarden-proof-ext'\n"
        "put(d + '/package.json', json.dumps({'name': 'hubwarden-proof-ext', 'version': '1.0.0', 'jupyterlab':"
        " {'_build': {'load': 'static/remoteEntry.js', 'extension': './extension'}}}))\n"
        "put(d + '/static/remoteEntry.js', textwrap.dedent('''\n"
        "  var _JUPYTERLAB = window._JUPYTERLAB = window._JUPYTERLAB || {};\n"
        "  _JUPYTERLAB['hubwarden-proof-ext'] = {init: function () {}, get: function () { return Promise.resolve(function () {\n"
        "    return {default: [{id: 'hubwarden-proof-ext:plugin', autoStart: true, activate: function (app) {\n"
        "      app.commands.addCommand('proof:download', {label: 'Download (proof)', execute: function () {}});\n"
        "      app.contextMenu.addItem({command: 'proof:download', selector: '.jp-DirListing-item', rank: 1});\n"
        "    }}]};\n"
        "  }); }};\n"
        "  '''))\n"
        "shutil.copy(H + '/data.csv', d + '/static/data.csv')\n",
        "shutil.rmtree(H + '/.local/share/jupyter/labextensions/hubwarden-proof-ext')\n",
        probe="labextension",
    ),
    Attempt(
        "user-kernelspec",
        "a kernelspec in ~/.local/share/jupyter/kernels whose logo is the data",
        "d = H + '/.local/share/jupyter/kernels/proofk'\n"
        "put(d + '/kernel.json', json.dumps({'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],"
        " 'display_name': 'proof', 'language': 'python'}))\n"
        "shutil.copy(H + '/data.csv', d + '/logo-64x64.png')\n",
        "shutil.rmtree(H + '/.local/share/jupyter/kernels/proofk')\n",
        probe="kernelspec",
    ),
    Attempt(
        "write-environment",
        "sitecustomize.py written into the server's environment",
        "p = os.path.join(sysconfig.get_paths()['purelib'], 'sitecustomize.py')\n"
        "try:\n    put(p, PAYLOAD); print('wrote', p)\nexcept OSError as e:\n    print('refused', p, e)\n",
        "p = os.path.join(sysconfig.get_paths()['purelib'], 'sitecustomize.py')\n"
        "os.path.exists(p) and os.remove(p)\n",
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
        "    try: put(p + '/labextensions/hubwarden-proof-ext2/package.json', '{}'); done.append(p)\n"
        "    except OSError: pass\n"
        "put(H + '/.proof-written', json.dumps(done)); print('writable:', done)\n",
        "from jupyter_core.paths import jupyter_config_path, jupyter_path\n"
        "for p in json.load(open(H + '/.proof-written')):\n"
        "    for q in (p + '/jupyter_server_config.d/zz-proof.json',):\n"
        "        os.path.exists(q) and os.remove(q)\n"
        "    shutil.rmtree(p + '/labextensions/hubwarden-proof-ext2', True)\n"
        "os.remove(H + '/.proof-written')\n",
    ),
    Attempt(
        "env-pythonpath",
        "PYTHONPATH (with a sitecustomize.py) passed when starting the server",
        "put(H + '/proofpath/sitecustomize.py', PAYLOAD)\n",
        "shutil.rmtree(H + '/proofpath')\n",
        start_env={"PYTHONPATH": "~/proofpath"},
    ),
    Attempt(
        "env-jupyter-config-path",
        "JUPYTER_CONFIG_PATH to a directory the user writes, passed when starting the server",
        "put('/tmp/proof-cfg-' + os.environ['JUPYTERHUB_USER'] + '/jupyter_server_config.json', DISABLE_JSON)\n",
        "shutil.rmtree('/tmp/proof-cfg-' + os.environ['JUPYTERHUB_USER'])\n",
        start_env={"JUPYTER_CONFIG_PATH": "/tmp/proof-cfg-{user}"},
    ),
    Attempt(
        "env-disable-user-config-off",
        "JUPYTERHUB_DISABLE_USER_CONFIG=0 passed when starting, with ~/.jupyter config disabling the extension",
        "put(H + '/.jupyter/jupyter_server_config.json', DISABLE_JSON)\n",
        "os.remove(H + '/.jupyter/jupyter_server_config.json')\n",
        start_env={"JUPYTERHUB_DISABLE_USER_CONFIG": "0"},
    ),
    Attempt(
        "ptrace-server",
        "open the running server's memory for writing (/proc/<server>/mem, what ptrace-based injection needs)",
        "",
        "",
        probe="ptrace",
        restart=False,
    ),
]
