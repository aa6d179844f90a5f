"""An Authorizer in front of the server's own, for handlers that serve bytes
without the contents manager.

jupyter-server consults the Authorizer in every `@authorized` handler, so
this is its own mechanism for closing routes whatever authorizer the
deployment uses (JupyterHub's, or the default): the guard refuses, and
otherwise asks the authorizer it wraps.

- nbconvert (GET /nbconvert/<format>/<path>, POST /nbconvert/<format>):
  exporters read the disk themselves (LaTeX inputs, embedded images) and the
  POST form converts any notebook the client sends. The format list
  (GET /api/nbconvert) carries no file bytes and stays.
- kernelspec resources (GET /kernelspecs/<name>/<path>): a static file server
  over each kernelspec's directory; only the logos and kernel.js/.css the
  frontends ask for are served.
- the stock /files/ handler (any StaticFileHandler on the "contents"
  resource): it would serve any file without the gate. The extension routes
  /files/ to its own handler; this refuses the stock one should it be reached.
"""

from __future__ import annotations

import re
from typing import Any

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.kernelspecs.handlers import KernelSpecResourceHandler
from jupyter_server.services.nbconvert.handlers import NbconvertRootHandler
from tornado import web
from traitlets import Instance

from .handlers import NotebookFilesHandler

KERNELSPEC_RESOURCE = re.compile(r"logo-[0-9]+x[0-9]+\.png|logo-svg\.svg|kernel\.(js|css)")


def refusal(handler: Any, resource: str) -> str | None:
    """The reason the guard refuses this request, or None to ask the inner authorizer."""
    if resource == "nbconvert" and not isinstance(handler, NbconvertRootHandler):
        return "nbconvert exports are off (they read files the contents gate does not see)"
    if resource == "kernelspecs" and isinstance(handler, KernelSpecResourceHandler):
        path = handler.path_kwargs.get("path")
        if path is None and handler.path_args:
            path = handler.path_args[-1]
        if not isinstance(path, str) or not KERNELSPEC_RESOURCE.fullmatch(path):
            return "kernelspec resources other than logos and kernel.js/.css are not served"
    if (
        resource == "contents"
        and isinstance(handler, web.StaticFileHandler)
        and not isinstance(handler, NotebookFilesHandler)
    ):
        return "the stock file handler is off (it bypasses the contents gate)"
    return None


class GuardedAuthorizer(Authorizer):
    """Refuses what `refusal` names, then defers to the wrapped authorizer."""

    inner = Instance(Authorizer)

    def is_authorized(self, handler, user, action, resource):
        reason = refusal(handler, resource)
        if reason is not None:
            self.log.warning(
                "hubwarden: refused %s %s: %s", handler.request.method, handler.request.path, reason
            )
            return False
        return self.inner.is_authorized(handler, user, action, resource)
