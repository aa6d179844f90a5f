"""The /files/ handler that goes through the contents gate, and the status API.

jupyter-server's default /files/ handler for file managers
(AuthenticatedFileHandler, a tornado StaticFileHandler) reads the disk itself
and never calls the contents manager; its stock alternative, FilesHandler,
does call it but answers HEAD without waiting for the check. This one asks
the gated manager for the file on GET and HEAD alike, so a non-notebook
answers 403 either way, and ignores Range (a notebook is sent whole).
"""

from __future__ import annotations

import json
from base64 import decodebytes

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from tornado import web


class NotebookFilesHandler(JupyterHandler):
    """Serve /files/<path> through the contents manager, notebooks only."""

    auth_resource = "contents"
    SUPPORTED_METHODS = ("GET", "HEAD")

    @property
    def content_security_policy(self) -> str:
        # As jupyter-server's FilesHandler: confine scripts to a unique origin.
        return super().content_security_policy + "; sandbox allow-scripts"

    @web.authenticated
    @authorized
    async def get(self, path: str) -> None:
        await self._serve(path, include_body=True)

    @web.authenticated
    @authorized
    async def head(self, path: str) -> None:
        await self._serve(path, include_body=False)

    async def _serve(self, path: str, include_body: bool) -> None:
        # /files/ requests must come from the same site, as in jupyter-server.
        self.check_xsrf_cookie()
        cm = self.contents_manager
        if not cm.allow_hidden and await ensure_async(cm.is_hidden(path)):
            raise web.HTTPError(404)
        path = path.strip("/")
        name = path.rsplit("/", 1)[-1]
        # content=True on HEAD too: the gate decides on the bytes, so HEAD
        # answers exactly what GET would.
        model = await ensure_async(cm.get(path, type="file", content=True))
        if model["format"] == "base64":
            body = decodebytes(model["content"].encode("ascii"))
        else:
            body = model["content"].encode("utf-8")
        if self.get_argument("download", None):
            self.set_attachment_header(name)
        self.set_header("Content-Type", "application/x-ipynb+json")
        self.set_header("Content-Length", str(len(body)))
        if include_body:
            self.write(body)
        await self.finish()


class StatusHandler(APIHandler):
    """GET /api/hubwarden: what the extension enforces in this server.

    For `hubwarden verify` and the proof suite: a server without this
    answer (404) does not run the extension.
    """

    auth_resource = "contents"

    @web.authenticated
    @authorized
    def get(self) -> None:
        status = self.settings["hubwarden_status"]
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(status()))
