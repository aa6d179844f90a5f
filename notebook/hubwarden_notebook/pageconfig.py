"""JupyterLab and Notebook 7 page config: the download plugins disabled and
locked by the server, whatever any labconfig file says.

Both frontends read `disabledExtensions` and `lockedExtensions` from the page
config the server renders into every page; jupyterlab_server and Notebook 7
pass it through `settings["page_config_hook"]` last, after every labconfig
file has been merged. The hook here runs whatever hook is installed (the
JupyterHub singleuser extension's puts the API token in) and then appends
the plugin ids.

JupyterHub's singleuser extension *sets* `page_config_hook` during its own
initialisation, which comes after this extension's (extensions load in
alphabetical order), so installing a hook once would not survive it. The
web application's settings are therefore replaced by a mapping that hands
out the composed hook (and the guarded authorizer) on every read,
whatever was stored last and by whom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# The plugins that put download, "open in a new browser tab" (a /files/ URL)
# and export entries in JupyterLab 4 and Notebook 7 (which reuses them).
DOWNLOAD_PLUGINS = (
    "@jupyterlab/docmanager-extension:download",
    "@jupyterlab/docmanager-extension:open-browser-tab",
    "@jupyterlab/filebrowser-extension:download",
    "@jupyterlab/filebrowser-extension:open-browser-tab",
    "@jupyterlab/notebook-extension:export",
)

HOOK = "page_config_hook"
AUTHORIZER = "authorizer"


def _ids(value: Any) -> list[str]:
    """A page-config extension list, as the frontends read it, from any shape."""
    if isinstance(value, dict):
        return [k for k, v in value.items() if isinstance(k, str) and v]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str)]
    return []


def enforce(page_config: dict[str, Any], plugins: Iterable[str]) -> dict[str, Any]:
    """Disable and lock the plugins in a page config (in place; returned)."""
    for key in ("disabledExtensions", "lockedExtensions"):
        ids = _ids(page_config.get(key))
        for p in plugins:
            if p not in ids:
                ids.append(p)
        page_config[key] = ids
    return page_config


def compose_hook(inner: Callable | None, plugins: tuple[str, ...]) -> Callable:
    def hubwarden_page_config_hook(handler: Any, page_config: dict[str, Any]) -> dict[str, Any]:
        if inner is not None:
            out = inner(handler, page_config)
            if out is not None:
                page_config = out
        return enforce(page_config, plugins)

    hubwarden_page_config_hook.hubwarden_inner = inner  # type: ignore[attr-defined]
    return hubwarden_page_config_hook


class GuardedSettings(dict):
    """tornado Application settings whose page_config_hook and authorizer
    are always hubwarden's, composed with whatever was stored under them."""

    def __init__(self, base: dict[str, Any], plugins: tuple[str, ...], guard_authorizer: Callable):
        super().__init__(base)
        self._plugins = plugins
        self._guard_authorizer = guard_authorizer
        self._authz_cache: tuple[Any, Any] | None = None

    def _wrap(self, key: str, value: Any) -> Any:
        if key == HOOK:
            return compose_hook(value, self._plugins)
        if key == AUTHORIZER and value is not None:
            cached = self._authz_cache
            if cached is None or cached[0] is not value:
                self._authz_cache = cached = (value, self._guard_authorizer(value))
            return cached[1]
        return value

    def __getitem__(self, key: str) -> Any:
        if key == HOOK:
            return self._wrap(key, super().get(key))
        return self._wrap(key, super().__getitem__(key))

    def get(self, key: str, default: Any = None) -> Any:
        if key == HOOK:
            return self._wrap(key, super().get(key))
        if key in self:
            return self._wrap(key, super().__getitem__(key))
        return default
