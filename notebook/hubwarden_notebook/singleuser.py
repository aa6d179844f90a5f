"""Start JupyterHub's single-user server with the lockdown:

    python3 -I -m hubwarden_notebook.singleuser

`-I` keeps the user's site-packages, the current directory and every
PYTHON* variable out of the server (and only the server: kernels are started
without it). Before anything of Jupyter is imported, this module

- makes the process non-dumpable (the user's processes, same uid, can
  neither ptrace it nor write its memory);
- fixes the variables that decide which server runs and what config it
  reads: JupyterHub's disable_user_config on (~/.jupyter holds no server
  configuration), the single-user server as a jupyter-server extension
  (JUPYTERHUB_SINGLEUSER_APP, which names the application class to run,
  removed);
- runs the start-up check (`lockdown.preflight`) and refuses to start,
  naming each problem, when a config or data path the server would read is
  the user's (JUPYTER_CONFIG_PATH, JUPYTER_CONFIG_DIR, JUPYTER_PATH,
  JUPYTER_DATA_DIR, JUPYTERLAB_DIR pointing at a directory the user can
  write; JUPYTER_NO_CONFIG; HOME containing the environment) or a shared
  object the user can write is loaded. A Python config file in such a path
  would run inside the server as soon as it loads its config, before any
  extension could refuse;
- enables this extension and its start-up check from the command line,
  which outranks every config file, so no config can turn either off.

Then it runs `jupyterhub-singleuser`; the extension checks again when it
loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from hubwarden_notebook import lockdown

# Command-line config: outranks config files (and JupyterHub's single-user
# extension keeps command-line values above its own).
FORCED_ARGS = (
    "--ServerApp.jpserver_extensions=hubwarden_notebook=True",
    "--HubwardenNotebook.lockdown_check=True",
    "--HubwardenNotebook.protect_process=True",
)

# JupyterHub single-user variables set for the server whatever the spawner
# passed (None: removed).
FIXED_ENV: dict[str, str | None] = {
    "JUPYTERHUB_DISABLE_USER_CONFIG": "1",
    "JUPYTERHUB_SINGLEUSER_EXTENSION": "1",
    "JUPYTERHUB_SINGLEUSER_APP": None,
    "JUPYTERHUB_SINGLEUSER_TEST_EXTENSION": None,
}


def fix_env(env: MutableMapping[str, str]) -> list[str]:
    """Apply FIXED_ENV; returns what changed, for the log."""
    changed = []
    for k, v in FIXED_ENV.items():
        if env.get(k) == v:
            continue
        if v is None:
            if k in env:
                changed.append(f"{k} removed (was {env.pop(k)!r})")
        else:
            if k in env:
                changed.append(f"{k}={v} (was {env[k]!r})")
            env[k] = v
    return changed


def main() -> None:
    lockdown.set_not_dumpable()
    if not sys.flags.isolated:
        sys.exit(
            "hubwarden_notebook.singleuser: start it with python -I "
            "(python3 -I -m hubwarden_notebook.singleuser): without -I the user's "
            "site-packages and PYTHON* variables reach the server"
        )
    for change in fix_env(os.environ):
        print(f"hubwarden_notebook.singleuser: {change}", file=sys.stderr)
    problems = lockdown.preflight()
    if problems:
        sys.exit(
            "hubwarden_notebook.singleuser: the server refuses to start: the lockdown is not in effect:\n  "
            + "\n  ".join(problems)
        )
    sys.argv[1:] = [*sys.argv[1:], *FORCED_ARGS]
    from jupyterhub.singleuser import main as singleuser_main

    singleuser_main()


if __name__ == "__main__":
    main()
