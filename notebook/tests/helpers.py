"""Request and leak helpers shared by the tests."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from conftest import CSV, PNG, SECRET
from tornado.httpclient import HTTPClientError

# Byte strings that only refused files hold: any of them in a response is a leak.
MARKERS = [
    SECRET[:8].encode(),  # the CSV, renamed copies and the Latin-1 file start with it
    base64.b64encode(PNG)[:24],  # the PNG as a data URI or base64 content
    base64.b64encode(CSV)[:12],
    b"root:x:0:0",  # /etc/passwd through a symlink
]


def leaked(body: bytes) -> bool:
    """Whether a response body carries any byte of a refused file."""
    if any(m in body for m in MARKERS):
        return True
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    if isinstance(doc, dict) and isinstance(doc.get("content"), str) and doc.get("format") == "base64":
        try:
            raw = base64.b64decode(doc["content"])
        except ValueError:
            return False
        return any(m in raw for m in MARKERS)
    return False


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict

    @property
    def json(self):
        return json.loads(self.body)


def make_ask(http_server_client, jp_auth_header, jp_base_url):
    """A request function for raw paths: `path` is sent as written (already
    URL-encoded, query string included), relative to the server's base URL."""

    async def ask(path: str, method: str = "GET", headers=None, body=None, auth=True, **kw) -> Answer:
        if body is not None and not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        h = dict(jp_auth_header) if auth else {}
        h.update(headers or {})
        url = jp_base_url.rstrip("/") + "/" + path.lstrip("/")
        try:
            r = await http_server_client.fetch(
                url,
                method=method,
                headers=h,
                body=body,
                allow_nonstandard_methods=True,
                follow_redirects=kw.pop("follow_redirects", True),
                **kw,
            )
        except HTTPClientError as e:
            resp = e.response
            if resp is None:
                raise
            return Answer(resp.code, resp.body or b"", dict(resp.headers))
        return Answer(r.code, r.body or b"", dict(r.headers))

    return ask
