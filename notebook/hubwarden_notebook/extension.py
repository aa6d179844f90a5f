"""Loading the extension into a jupyter-server: configuration, the start-up
check, and putting each piece in place."""

from __future__ import annotations

import sys
from typing import Any

from jupyter_core.paths import jupyter_config_path, jupyter_path
from jupyter_server.utils import url_path_join
from traitlets import Bool, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from . import __version__, lockdown
from .authz import GuardedAuthorizer
from .contents import UnsupportedContentsManager, gate_contents_manager
from .handlers import NotebookFilesHandler, StatusHandler
from .pageconfig import DOWNLOAD_PLUGINS, GuardedSettings


class HubwardenNotebook(LoggingConfigurable):
    """Configuration of the hubwarden_notebook server extension (c.HubwardenNotebook)."""

    max_notebook_size = Integer(
        32 * 1024 * 1024,
        config=True,
        help="""Largest notebook, in bytes, whose content the server serves.
        Larger files are listed but not opened. The default stays under the
        sidecar's per-flow budget, so opening a notebook is never throttled.""",
    )
    disabled_plugins = List(
        Unicode(),
        default_value=list(DOWNLOAD_PLUGINS),
        config=True,
        help="""JupyterLab / Notebook 7 plugin ids the server disables and locks
        in every page config, whatever labconfig files say. The default is every
        plugin that offers download, open-in-browser-tab or export entries.""",
    )
    protect_process = Bool(
        True,
        config=True,
        help="""Make the server process non-dumpable when the extension links, so
        that the user's own processes (same uid) can neither ptrace it nor write
        its memory. Kernels and terminals are exec'd and not affected.""",
    )
    lockdown_check = Bool(
        True,
        config=True,
        help="""Refuse to start when the lockdown is not in effect (user site on
        sys.path, a writable environment, config or data path, a config or data
        path in the home directory, a dumpable server process). Turn off only to
        test the extension itself.""",
    )


class LockdownNotInEffect(SystemExit):
    """The start-up check failed. A SystemExit, because jupyter-server logs
    and ignores an Exception from an extension's loader: the server must not
    start without the lockdown."""


def link(serverapp: Any) -> None:
    # As early as an extension can run: before configurables, kernels, the
    # HTTP server. Kernels and terminals are exec'd and dumpable again.
    # (Config files are loaded by now; the configurable is not built yet.)
    section = serverapp.config.get("HubwardenNotebook", {})
    if section.get("protect_process", True):
        lockdown.set_not_dumpable()


def load(serverapp: Any) -> None:
    log = serverapp.log
    cfg = HubwardenNotebook(parent=serverapp)
    problems: list[str] = []
    if cfg.lockdown_check:
        # The walk of the environment, config and data paths for anything
        # the user can write is done once: hubwarden_notebook.singleuser's
        # preflight walked the same paths (the server's, without HOME) in
        # this process before the server started.
        problems = lockdown.check(serverapp.config_file_paths, walk=not lockdown.preflight_passed())
        if problems:
            for p in problems:
                log.critical("hubwarden_notebook: lockdown not in effect: %s", p)
            raise LockdownNotInEffect(
                "hubwarden_notebook: the server refuses to start: the lockdown is not in effect:\n  "
                + "\n  ".join(problems)
            )

    cm = serverapp.contents_manager
    try:
        gated = gate_contents_manager(cm, cfg.max_notebook_size)
    except UnsupportedContentsManager as e:
        log.critical("hubwarden_notebook: %s", e)
        raise LockdownNotInEffect(f"hubwarden_notebook: the server refuses to start: {e}") from e
    cm.files_handler_class = NotebookFilesHandler
    cm.files_handler_params = {}

    web_app = serverapp.web_app
    base_url = web_app.settings.get("base_url", "/")
    plugins = tuple(cfg.disabled_plugins)

    def status() -> dict[str, Any]:
        hook = web_app.settings.get("page_config_hook")
        return {
            "extension": "hubwarden_notebook",
            "version": __version__,
            "contents_manager": f"{type(cm).__module__}.{type(cm).__qualname__}",
            "notebooks_only": type(cm) is gated,
            "max_notebook_size": cfg.max_notebook_size,
            "disabled_plugins": list(plugins),
            "page_config_hook": getattr(hook, "__name__", None),
            "authorizer": type(web_app.settings.get("authorizer")).__name__,
            "lockdown_check": cfg.lockdown_check,
            "lockdown_problems": problems,
            # Started by hubwarden_notebook.singleuser, whose check ran
            # before the server read any config file.
            "preflight": lockdown.preflight_passed(),
            "dumpable": lockdown.dumpable(),
            "config_file_paths": list(serverapp.config_file_paths),
            "data_paths": jupyter_path(),
            "frontend_config_paths": jupyter_config_path(),
            "python": sys.executable,
            "isolated": bool(sys.flags.isolated),
        }

    # Routes added by extensions are matched before the server's own, so
    # this /files/ is the one requests reach; the guarded authorizer
    # refuses the stock handler should anything reach it.
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, r"/files/(.*)"), NotebookFilesHandler),
            (url_path_join(base_url, r"/api/hubwarden"), StatusHandler),
        ],
    )

    def guard(inner: Any) -> GuardedAuthorizer:
        return GuardedAuthorizer(
            parent=serverapp, inner=inner, identity_provider=serverapp.identity_provider, log=log
        )

    if not isinstance(web_app.settings, GuardedSettings):
        web_app.settings = GuardedSettings(web_app.settings, plugins, guard)
    web_app.settings["hubwarden_status"] = status
    log.info(
        "hubwarden_notebook %s: contents notebooks-only (%s, cap %d bytes), /files/ through the gate, "
        "nbconvert and kernelspec files closed, plugins disabled: %s, lockdown check %s",
        __version__,
        type(cm).__name__,
        cfg.max_notebook_size,
        ", ".join(plugins) or "none",
        "passed" if cfg.lockdown_check else "off",
    )
