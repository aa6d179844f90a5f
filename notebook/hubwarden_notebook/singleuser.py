"""Start JupyterHub's single-user server with the lockdown:

    python3 -I -m hubwarden_notebook.singleuser

`-I` keeps the user's site-packages, the current directory and every
PYTHON* variable out of the server (and only the server: kernels are started
without it). This module then makes the process non-dumpable before anything
else is imported, turns JupyterHub's disable_user_config on for the server
(so ~/.jupyter holds no server configuration), and runs
`jupyterhub-singleuser`. The extension's start-up check refuses to start if
any of this is missing.
"""

import os
import sys

from hubwarden_notebook import lockdown


def main() -> None:
    lockdown.set_not_dumpable()
    if not sys.flags.isolated:
        sys.exit(
            "hubwarden_notebook.singleuser: start it with python -I "
            "(python3 -I -m hubwarden_notebook.singleuser): without -I the user's "
            "site-packages and PYTHON* variables reach the server"
        )
    os.environ["JUPYTERHUB_DISABLE_USER_CONFIG"] = "1"
    from jupyterhub.singleuser import main as singleuser_main

    singleuser_main()


if __name__ == "__main__":
    main()
