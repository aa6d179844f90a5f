"""Notebooks-only contents.

The gate wraps the server's file contents manager (``FileContentsManager``,
``AsyncFileContentsManager``, the large-file managers and any subclass): its
``get`` returns content only for a file whose name ends in ``.ipynb`` and
whose bytes are a valid notebook, whatever ``type`` or ``format`` was asked
and whether or not a hash was asked. Metadata (``content=False``) is served
for everything, so directory listings work; saving, uploading, renaming,
copying and deleting are untouched.

The bytes are read once, under a size cap, from a regular file (not a FIFO
or a device a symlink points at), validated, and the model is built from
those same bytes, so a file swapped between the check and the read cannot
slip through. A refusal names the path and the reason and never echoes a
byte of the file (nbformat's own errors quote the file's start).
"""

from __future__ import annotations

import base64
import contextvars
import json
import mimetypes
import os
import stat
from typing import Any

import nbformat
from anyio.to_thread import run_sync
from jupyter_server.services.contents.filemanager import (
    AsyncFileContentsManager,
    FileContentsManager,
)
from tornado import web

NOTEBOOK_SUFFIX = ".ipynb"

# Set while the manager reads a file for its own purposes (copy reads the
# source through get, then saves it): the bytes stay in the server.
_internal_read: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hubwarden_internal_read", default=False
)


class Refused(web.HTTPError):
    """A file whose content the gate will not serve (HTTP 403).

    The message names the API path and the reason, never the file's bytes.
    """

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason_text = reason
        # jupyter-server's API error replies carry log_message as it is, and
        # tornado logs it as a format string: formatted here, '%' escaped.
        shown = repr(path).replace("%", "%25")
        super().__init__(403, f"hubwarden: {shown}: content not served: {reason}")


# Reasons, each a fixed text (they are asserted in the tests).
NOT_A_NOTEBOOK_NAME = "only notebooks (*.ipynb) are served"
NOT_REGULAR = "not a regular file"
UNREADABLE = "the file cannot be read"
NOT_UTF8 = "not UTF-8 text, so not a notebook"
NOT_JSON = "not JSON, so not a notebook"
NOT_NOTEBOOK = "not a valid notebook (nbformat)"


def too_large(cap: int) -> str:
    return f"larger than the notebook size cap of {cap} bytes (HubwardenNotebook.max_notebook_size)"


def read_capped(path: str, os_path: str, cap: int) -> bytes:
    """Read a regular file of at most cap bytes, or raise Refused.

    O_NONBLOCK so that opening a FIFO never hangs; the type and size are
    checked on the open descriptor, so a swap after the stat is caught.
    """
    try:
        st = os.stat(os_path)
    except FileNotFoundError as e:
        raise web.HTTPError(404, "file does not exist: %r", path) from e
    except OSError as e:
        raise Refused(path, UNREADABLE) from e
    if not stat.S_ISREG(st.st_mode):
        raise Refused(path, NOT_REGULAR)
    if st.st_size > cap:
        raise Refused(path, too_large(cap))
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(os_path, flags)
    except OSError as e:
        raise Refused(path, UNREADABLE) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(path, NOT_REGULAR)
        chunks = []
        n = 0
        while True:
            b = os.read(fd, min(1 << 20, cap + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
            if n > cap:
                raise Refused(path, too_large(cap))
        return b"".join(chunks)
    except OSError as e:
        raise Refused(path, UNREADABLE) from e
    finally:
        os.close(fd)


def parse_notebook(path: str, data: bytes) -> nbformat.NotebookNode:
    """Return the notebook (nbformat 4) the bytes hold, or raise Refused.

    Strict: UTF-8, JSON, an object, convertible to nbformat 4 and valid
    against its schema. Errors are replaced by fixed reasons: nbformat's own
    messages quote the file.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(path, NOT_UTF8) from None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise Refused(path, NOT_JSON) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("nbformat"), int):
        raise Refused(path, NOT_NOTEBOOK)
    try:
        # nbformat's reader, as jupyter-server reads notebooks (multi-line
        # sources joined, older versions converted): the JSON is known to be
        # valid here, so its NotJSONError (which quotes the file) cannot
        # happen, and a captured validation error is not logged.
        nb = nbformat.reads(text, as_version=nbformat.current_nbformat, capture_validation_error={})
        nbformat.validate(nb, repair_duplicate_cell_ids=False, strip_invalid_metadata=False)
    except Exception:  # ValidationError, conversion errors, malformed structures
        raise Refused(path, NOT_NOTEBOOK) from None
    if nb.get("nbformat") != nbformat.current_nbformat:
        raise Refused(path, NOT_NOTEBOOK)
    return nb


def checked_notebook(path: str, os_path: str, cap: int) -> tuple[bytes, nbformat.NotebookNode]:
    """The gate: name, then bytes, then notebook. Raises Refused."""
    if not path.rsplit("/", 1)[-1].endswith(NOTEBOOK_SUFFIX):
        raise Refused(path, NOT_A_NOTEBOOK_NAME)
    data = read_capped(path, os_path, cap)
    return data, parse_notebook(path, data)


class _Gate:
    """What the sync and async variants share."""

    #: Set by gate_contents_manager from HubwardenNotebook.max_notebook_size.
    hubwarden_max_notebook_size: int = 32 * 1024 * 1024

    def _hubwarden_model(
        self,
        meta: dict[str, Any],
        path: str,
        data: bytes,
        nb: nbformat.NotebookNode,
        format: str | None,
        require_hash: bool,
    ) -> dict[str, Any]:
        model = dict(meta)
        if model["type"] == "notebook":
            self.mark_trusted_cells(nb, path)  # type: ignore[attr-defined]
            model["content"] = nb
            model["format"] = "json"
            self.validate_notebook_model(model, {})  # type: ignore[attr-defined]
        else:
            if format == "base64":
                model["content"] = base64.encodebytes(data).decode("ascii")
                model["format"] = "base64"
                default_mime = "application/octet-stream"
            else:
                model["content"] = data.decode("utf-8")
                model["format"] = "text"
                default_mime = "text/plain"
            model["mimetype"] = mimetypes.guess_type(path)[0] or default_mime
        if require_hash:
            model.update(**self._get_hash(data))  # type: ignore[attr-defined]
        return model


class NotebooksOnly(_Gate):
    """Mixin for the synchronous file managers."""

    def get(self, path, content=True, type=None, format=None, require_hash=False):
        if _internal_read.get() or not (content or require_hash):
            return super().get(  # type: ignore[misc]
                path, content=content, type=type, format=format, require_hash=require_hash
            )
        path = path.strip("/")
        meta = super().get(path, content=False, type=type, format=format)  # type: ignore[misc]
        if meta["type"] == "directory":
            return super().get(path, content=content, type=type, format=format)  # type: ignore[misc]
        os_path = self._get_os_path(path)  # type: ignore[attr-defined]
        data, nb = checked_notebook(path, os_path, self.hubwarden_max_notebook_size)
        return self._hubwarden_model(meta, path, data, nb, format, require_hash)

    def copy(self, from_path, to_path=None):
        token = _internal_read.set(True)
        try:
            return super().copy(from_path, to_path)  # type: ignore[misc]
        finally:
            _internal_read.reset(token)


class AsyncNotebooksOnly(_Gate):
    """Mixin for the asynchronous file managers (the default AsyncLargeFileManager)."""

    async def get(self, path, content=True, type=None, format=None, require_hash=False):
        if _internal_read.get() or not (content or require_hash):
            return await super().get(  # type: ignore[misc]
                path, content=content, type=type, format=format, require_hash=require_hash
            )
        path = path.strip("/")
        meta = await super().get(path, content=False, type=type, format=format)  # type: ignore[misc]
        if meta["type"] == "directory":
            return await super().get(path, content=content, type=type, format=format)  # type: ignore[misc]
        os_path = self._get_os_path(path)  # type: ignore[attr-defined]
        data, nb = await run_sync(
            checked_notebook, path, os_path, self.hubwarden_max_notebook_size
        )
        return self._hubwarden_model(meta, path, data, nb, format, require_hash)

    async def copy(self, from_path, to_path=None):
        token = _internal_read.set(True)
        try:
            return await super().copy(from_path, to_path)  # type: ignore[misc]
        finally:
            _internal_read.reset(token)


class UnsupportedContentsManager(RuntimeError):
    """The configured contents manager is not a file manager the gate can wrap."""


def gate_contents_manager(cm: Any, max_notebook_size: int) -> type:
    """Make the running contents manager notebooks-only, in place.

    The instance's class is replaced by a subclass that puts the gate in
    front of it. In place, because by the time extensions load, the manager
    is already referenced by the session manager, the web application's
    settings and any extension loaded before this one; a new instance would
    leave those references ungated. The subclass adds methods only (no
    traits, no slots), so the instance layout is unchanged.
    """
    cls = type(cm)
    if isinstance(cm, _Gate):
        cm.hubwarden_max_notebook_size = max_notebook_size
        return cls
    if isinstance(cm, AsyncFileContentsManager):
        mixin: type = AsyncNotebooksOnly
    elif isinstance(cm, FileContentsManager):
        mixin = NotebooksOnly
    else:
        raise UnsupportedContentsManager(
            f"ServerApp.contents_manager_class is {cls.__module__}.{cls.__qualname__}: "
            "hubwarden_notebook can gate only jupyter_server's file contents managers "
            "(FileContentsManager, AsyncFileContentsManager, LargeFileManager, "
            "AsyncLargeFileManager) and their subclasses"
        )
    gated = type(f"NotebooksOnly{cls.__name__}", (mixin, cls), {"__module__": __name__})
    cm.__class__ = gated
    cm.hubwarden_max_notebook_size = max_notebook_size
    return gated
