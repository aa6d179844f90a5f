"""The start-up check: the server refuses to start when the lockdown is not
in effect, naming each problem.

The lockdown is what keeps the user's own code and config out of the server
process (its environment stays separate from the kernels', which remain the
user's): user site-packages off the server's sys.path (`python -I`), nothing
on sys.path or in the environment the user can write, no server config or
data path (labextensions, kernelspecs) in the home directory or writable,
no preload or bytecode cache the user controls, and the process not
dumpable, so that the user's processes (same uid) cannot attach to it.

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

# Environment variables that load code into the server whatever its flags.
PRELOAD_VARS = ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT")

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
    preload: dict[str, str] = field(default_factory=dict)


def in_home(path: str, home: str) -> bool:
    if not home or home == "/":
        return False
    path = os.path.realpath(path)
    home = os.path.realpath(home)
    return path == home or path.startswith(home + os.sep)


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
    if facts.user_site_enabled:
        out.append(
            "user site-packages are on the server's sys.path: start the server with "
            "python -I (e.g. python3 -I -m hubwarden_notebook.singleuser)"
        )
    seen: set[str] = set()
    for p in facts.sys_path:
        p = p or os.getcwd()
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
    for k, v in sorted(facts.preload.items()):
        out.append(f"{k} is set for the server ({v}): it loads code into the server process")
    if facts.dumpable:
        out.append(
            "the server process is dumpable: the user's processes (same uid) can attach to it "
            "with ptrace or write its memory (hubwarden_notebook sets it non-dumpable when it loads)"
        )
    return out


def walk_writable(roots: Iterable[str], home: str, limit: int = WALK_REPORT_LIMIT) -> list[str]:
    """Files and directories under roots (outside home) this process can
    write: a writable package directory or module anywhere in the server's
    environment is code the user can change."""
    found: list[str] = []
    for root in roots:
        if not os.path.isdir(root) or in_home(root, home):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
                if not os.path.islink(name) and os.access(name, os.W_OK):
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


def gather(config_file_paths: list[str]) -> Facts:
    """The facts of the running server process."""
    from jupyter_core.paths import jupyter_path

    paths = sysconfig.get_paths()
    env_paths = []
    for p in [sys.prefix, sys.exec_prefix] + [
        paths.get(k, "") for k in ("purelib", "platlib", "scripts", "data", "stdlib", "platstdlib")
    ]:
        if p and p not in env_paths:
            env_paths.append(p)
    return Facts(
        uid=os.geteuid(),
        home=os.path.expanduser("~"),
        user_site_enabled=bool(site.ENABLE_USER_SITE),
        sys_path=list(sys.path),
        env_paths=env_paths,
        config_file_paths=list(config_file_paths),
        data_paths=list(jupyter_path()),
        pycache_prefix=getattr(sys, "pycache_prefix", None),
        dumpable=dumpable(),
        preload={k: os.environ[k] for k in PRELOAD_VARS if os.environ.get(k)},
    )


def check(config_file_paths: list[str]) -> list[str]:
    """All problems of the running process, including the environment walk."""
    facts = gather(config_file_paths)
    found = problems(facts)
    if facts.uid != 0:
        roots = [p for p in facts.sys_path if p and os.path.isdir(p)]
        for p in walk_writable(roots, facts.home):
            found.append(f"writable by the user inside the server's environment: {p}")
    return found
