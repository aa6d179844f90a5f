# Jupyter Server configuration of the hardened single-user image, installed at
# /usr/local/etc/jupyter/jupyter_server_config.py (a root-owned system path).
#
# It enforces nothing on the network: hubwarden does. It refuses to start the
# server when the image's server-side lockdown is not in effect, so that a
# changed image or spawner configuration fails closed instead of silently
# loading the user's own configuration or code into the server process.
import os
import site
import sysconfig

c = get_config()  # noqa: F821 (provided by the config loader)


def _lockdown_problems():
    problems = []
    if os.environ.get("JUPYTERHUB_DISABLE_USER_CONFIG", "") not in ("1", "true", "True"):
        problems.append(
            "JUPYTERHUB_DISABLE_USER_CONFIG is not set: the user's ~/.jupyter would be loaded"
        )
    if site.ENABLE_USER_SITE:
        problems.append(
            "the user site-packages is on sys.path (start the server with "
            "python3 -I -m hubwarden_notebook.singleuser): "
            "user-installed modules could shadow the server's"
        )
    # Every config dir (server config, labconfig/page_config.json) must be
    # out of the user's reach: not in the home directory, not writable.
    from jupyter_core.paths import jupyter_config_path

    home = os.path.realpath(os.path.expanduser("~"))
    for path in jupyter_config_path():
        real = os.path.realpath(path)
        if real == home or real.startswith(home + os.sep):
            problems.append(f"a Jupyter config dir is in the home directory: {path}")
        elif os.geteuid() != 0 and os.path.exists(real) and os.access(real, os.W_OK):
            problems.append(f"a Jupyter config dir is writable by the user: {path}")
    # Running as root is how the image is built, never how the server runs.
    if os.geteuid() != 0:
        for key in ("purelib", "platlib", "scripts", "data"):
            path = sysconfig.get_paths()[key]
            if os.access(path, os.W_OK):
                problems.append(f"the server environment is writable by the user: {path}")
    return problems


_problems = _lockdown_problems()
if _problems:
    raise SystemExit("hardened image lockdown not in effect:\n  " + "\n  ".join(_problems))
