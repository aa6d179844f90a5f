"""The start-up check: the server refuses to start when the lockdown is not
in effect, naming each problem.

The lockdown is what keeps the user's own code and config out of the server
process (its environment stays separate from the kernels', which remain the
user's): user site-packages off the server's sys.path (`python -I`), nothing
on sys.path or in the environment the user can write, no server config or
data path (labextensions, kernelspecs) in the home directory or writable,
no preload or bytecode cache the user controls, and the process not
dumpable, so that the user's processes (same uid) cannot attach to it.

It runs twice: `preflight` in `hubwarden_notebook.singleuser` before
jupyter-server is imported (a config path the user can write holds Python
config files, which run when the server loads its config, before any
extension), and `check` when the extension loads (for servers started some
other way). Variables a deployment may let the user set
(JUPYTER_CONFIG_PATH, JUPYTER_CONFIG_DIR, JUPYTER_PATH, JUPYTER_DATA_DIR,
JUPYTER_NO_CONFIG, JUPYTERLAB_DIR, HOME, LD_PRELOAD and the other loader
variables) are judged by where they make the server read code or config.

`gather` reads the facts from the running process; `problems` is pure, so
each rule is unit-tested on constructed facts.
"""

from __future__ import annotations

import ctypes
import os
import site
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4

# Variables that make the dynamic loader or libc load shared objects into
# the server before any Python code runs (glibc drops them, with a few
# others, for setuid programs: UNSECURE_ENVVARS). Each names files (a list
# of libraries) or directories (a search path).
PRELOAD_VARS = ("LD_PRELOAD", "LD_AUDIT")
SEARCH_PATH_VARS = ("LD_LIBRARY_PATH", "GCONV_PATH")

# How many writable files or directories the walk of the environment
# reports before it stops (one is enough to refuse).
WALK_REPORT_LIMIT = 5


@dataclass
class Facts:
    uid: int
    home: str
    user_site_enabled: bool
    sys_path: list[str]
    env_paths: list[str]  # sys.prefix, sysconfig's install paths
    config_file_paths: list[str]  # where the server reads its config files
    data_paths: list[str]  # jupyter_path(): labextensions, kernels, nbextensions
    pycache_prefix: str | None
    dumpable: bool | None  # None: unknown (not Linux)
    preload: dict[str, str] = field(default_factory=dict)  # PRELOAD_VARS and SEARCH_PATH_VARS set
    cwd: str = "/"
    mapped: list[str] = field(default_factory=list)  # files mapped into the process
    no_config: bool = False  # JUPYTER_NO_CONFIG
    lab_dir: str | None = None  # JUPYTERLAB_DIR
    # The server's environment and the admin's config paths: HOME must not
    # contain them (JupyterHub's disable_user_config drops what is in HOME).
    admin_paths: list[str] = field(default_factory=list)


def in_home(path: str, home: str) -> bool:
    if not home:
        return False
    path = os.path.realpath(path)
    home = os.path.realpath(home)
    return path == home or path.startswith(home.rstrip(os.sep) + os.sep)


def writable(path: str) -> bool:
    """Whether this process can write path, or create it: a missing path
    counts by its nearest existing ancestor (whoever can create it can plant
    files in it)."""
    p = os.path.abspath(path)
    while True:
        if os.path.lexists(p):
            return os.access(p, os.W_OK, effective_ids=os.access in os.supports_effective_ids)
        parent = os.path.dirname(p)
        if parent == p:
            return False
        p = parent


def problems(facts: Facts, can_write: Callable[[str], bool] = writable) -> list[str]:
    """Every reason the lockdown is not in effect, each naming its fix."""
    out: list[str] = []
    if facts.uid == 0:
        out.append(
            "the server runs as root: the lockdown is checked for the notebook user "
            "(run the server as that user)"
        )
        return out
    p = home_contains_admin_path(facts)
    if p:
        out.append(
            f"HOME ({facts.home}) contains {p}, a path of the server's environment or of the "
            "admin's config: JupyterHub's disable_user_config drops everything under HOME, this "
            "extension's enabling config with it (HOME must be the user's home directory)"
        )
        return out
    if facts.no_config:
        out.append(
            "JUPYTER_NO_CONFIG is set: the server would read no config file, the ones that enable "
            "this extension and JupyterLab included (unset it)"
        )
    if facts.user_site_enabled:
        out.append(
            "user site-packages are on the server's sys.path: start the server with "
            "python -I (e.g. python3 -I -m hubwarden_notebook.singleuser)"
        )
    seen: set[str] = set()
    for p in facts.sys_path:
        p = p or facts.cwd
        if p in seen:
            continue
        seen.add(p)
        if in_home(p, facts.home):
            out.append(f"sys.path entry in the home directory: {p} (start the server with python -I)")
        elif can_write(p):
            out.append(f"sys.path entry writable by the user: {p}")
    for p in facts.env_paths:
        if p not in seen and can_write(p):
            out.append(f"the server's environment is writable by the user: {p}")
        seen.add(p)
    for p in facts.config_file_paths:
        if in_home(p, facts.home):
            out.append(
                f"a server config path is in the home directory: {p} "
                "(set JupyterHub's Spawner.disable_user_config, or JUPYTERHUB_DISABLE_USER_CONFIG=1)"
            )
        elif can_write(p):
            out.append(f"a server config path is writable by the user: {p}")
    for p in facts.data_paths:
        if in_home(p, facts.home):
            out.append(
                f"a Jupyter data path (labextensions, kernelspecs) is in the home directory: {p} "
                "(set JupyterHub's Spawner.disable_user_config; do not set JUPYTER_PATH or "
                "JUPYTER_DATA_DIR to a user directory)"
            )
        elif can_write(p):
            out.append(f"a Jupyter data path (labextensions, kernelspecs) is writable by the user: {p}")
    if facts.pycache_prefix and (
        in_home(facts.pycache_prefix, facts.home) or can_write(facts.pycache_prefix)
    ):
        out.append(
            f"the bytecode cache prefix is the user's: {facts.pycache_prefix} "
            "(unset PYTHONPYCACHEPREFIX; python -I ignores it)"
        )
    if facts.lab_dir is not None:
        if in_home(facts.lab_dir, facts.home) or can_write(facts.lab_dir):
            out.append(
                f"JUPYTERLAB_DIR ({facts.lab_dir}) is the user's: JupyterLab would serve the "
                "application (its code, settings, page config) from it"
            )
    for k, v in sorted(facts.preload.items()):
        for p in loader_paths(k, v, facts.cwd):
            if in_home(p, facts.home) or can_write(p):
                out.append(
                    f"{k} names {p}, which the user can write: the loader would load the "
                    "user's code into the server process"
                )
    for p in facts.mapped:
        if in_home(p, facts.home) or can_write(p):
            out.append(
                f"a file the user can write is mapped into the server process: {p} "
                "(a shared object preloaded from the user's files)"
            )
    if facts.dumpable:
        out.append(
            "the server process is dumpable: the user's processes (same uid) can attach to it "
            "with ptrace or write its memory (hubwarden_notebook sets it non-dumpable when it loads)"
        )
    return out


def home_contains_admin_path(facts: Facts) -> str | None:
    """The first of the server's environment or admin config paths under HOME."""
    return next((p for p in facts.admin_paths if in_home(p, facts.home)), None)


def loader_paths(var: str, value: str, cwd: str) -> list[str]:
    """The files or directories a loader variable makes the process read.
    A library name without a slash is looked up in the library path (judged
    by LD_LIBRARY_PATH); an empty search-path entry is the current
    directory."""
    out = []
    if var in PRELOAD_VARS:
        for entry in value.replace(":", " ").split():
            if "/" in entry:
                out.append(os.path.normpath(os.path.join(cwd, entry)))
    else:
        for entry in value.split(":"):
            out.append(os.path.normpath(os.path.join(cwd, entry)) if entry else cwd)
    return list(dict.fromkeys(out))


def mapped_files(maps: str = "/proc/self/maps") -> list[str]:
    """The files mapped executable into this process (Linux), each once:
    the code it runs. A deleted file is named by its old path (judged by the
    directory it was in); devices and other special files are left out."""
    out: list[str] = []
    try:
        with open(maps) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or "x" not in parts[1] or not parts[5].startswith("/"):
            continue
        path = parts[5]
        if path.endswith(" (deleted)"):
            path = path[: -len(" (deleted)")]
        if os.path.exists(path) and not os.path.isfile(path):
            continue
        if path not in out:
            out.append(path)
    return out


def walk_writable(roots: Iterable[str], home: str, limit: int = WALK_REPORT_LIMIT) -> list[str]:
    """Files and directories under roots (outside home) this process can
    write: a writable package directory or module anywhere in the server's
    environment is code the user can change."""
    found: list[str] = []
    seen: set[str] = set()
    for root in roots:
        if not os.path.isdir(root) or in_home(root, home):
            continue
        # Symbolic links are followed (what they point at is what the server
        # reads), each real directory walked once.
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames[:] = []
                continue
            seen.add(real)
            for name in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
                if os.access(name, os.W_OK):
                    found.append(name)
                    if len(found) >= limit:
                        return found
    return found


def dumpable() -> bool | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def set_not_dumpable() -> bool:
    """Make this process non-dumpable (Linux): processes of the same uid can
    no longer ptrace it or open its /proc/<pid>/mem. execve resets the flag,
    so kernels and terminals the server starts are not affected."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0


def server_config_paths(home: str) -> list[str]:
    """The config file paths jupyter-server will read, as JupyterHub's
    disable_user_config leaves them: ServerApp.config_file_paths (the config
    directory first, then jupyter_config_path(), JUPYTER_CONFIG_PATH's
    entries at the front) without the entries under HOME. Computed before
    jupyter-server is imported."""
    from jupyter_core.paths import ENV_CONFIG_PATH, jupyter_config_dir, jupyter_config_path

    paths = jupyter_config_path()
    config_dir = jupyter_config_dir()
    if not os.environ.get("JUPYTER_CONFIG_DIR") and in_home(config_dir, home):
        config_dir = ENV_CONFIG_PATH[0]
    if config_dir not in paths:
        paths.insert(0, config_dir)
    return [p for p in paths if not in_home(p, home)]


def gather(config_file_paths: list[str] | None = None) -> Facts:
    """The facts of the running server process. config_file_paths: the
    server's, or None before there is a server (they are computed as it
    will compute them, home excluded as disable_user_config excludes it).
    """
    from jupyter_core.paths import ENV_CONFIG_PATH, SYSTEM_CONFIG_PATH, jupyter_path

    home = os.path.expanduser("~")
    no_config = bool(os.environ.get("JUPYTER_NO_CONFIG"))
    data_paths = list(jupyter_path())
    if config_file_paths is None:
        # Before the server: JupyterHub's disable_user_config (which the
        # server will apply) drops what is under HOME.
        config_file_paths = [] if no_config else server_config_paths(home)
        data_paths = [p for p in data_paths if not in_home(p, home)]
    paths = sysconfig.get_paths()
    env_paths = []
    for p in [sys.prefix, sys.exec_prefix] + [
        paths.get(k, "") for k in ("purelib", "platlib", "scripts", "data", "stdlib", "platstdlib")
    ]:
        if p and p not in env_paths:
            env_paths.append(p)
    admin_paths = []
    for p in [sys.prefix, sys.exec_prefix, *ENV_CONFIG_PATH, *SYSTEM_CONFIG_PATH]:
        if p not in admin_paths:
            admin_paths.append(p)
    return Facts(
        uid=os.geteuid(),
        home=home,
        user_site_enabled=bool(site.ENABLE_USER_SITE),
        sys_path=list(sys.path),
        env_paths=env_paths,
        config_file_paths=list(config_file_paths),
        data_paths=data_paths,
        pycache_prefix=getattr(sys, "pycache_prefix", None),
        dumpable=dumpable(),
        preload={k: os.environ[k] for k in PRELOAD_VARS + SEARCH_PATH_VARS if os.environ.get(k)},
        cwd=os.getcwd(),
        mapped=mapped_files(),
        no_config=no_config,
        lab_dir=os.environ.get("JUPYTERLAB_DIR") or None,
        admin_paths=admin_paths,
    )


def check(config_file_paths: list[str] | None = None, walk: bool = True) -> list[str]:
    """All problems of the running process, and (walk) anything the user can
    write in the environment, config and data paths. config_file_paths: the
    running server's, or None before it exists."""
    facts = gather(config_file_paths)
    found = problems(facts)
    if walk and facts.uid != 0 and not home_contains_admin_path(facts):
        roots = [p for p in facts.sys_path + facts.config_file_paths + facts.data_paths
                 if p and os.path.isdir(p)]
        if facts.lab_dir:
            roots.append(facts.lab_dir)
        for p in walk_writable(roots, facts.home):
            found.append(f"writable by the user inside the server's environment or config: {p}")
    return found


# Whether this process passed `preflight`: it was started by
# hubwarden_notebook.singleuser, whose check ran before the server read any
# config file (GET /api/hubwarden reports it).
_preflight_passed = False


def preflight() -> list[str]:
    """The check before jupyter-server is imported (hubwarden_notebook.singleuser)."""
    global _preflight_passed
    found = check(None)
    _preflight_passed = not found
    return found


def preflight_passed() -> bool:
    return _preflight_passed
