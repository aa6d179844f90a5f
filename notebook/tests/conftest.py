"""Fixtures: a jupyter-server 2.x (pytest-jupyter) with the extension
("hubwarden") or without it ("stock", the control), and a root directory
holding a secret CSV and every kind of file the gate must refuse."""

from __future__ import annotations

import base64
import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

pytest_plugins = ["pytest_jupyter.jupyter_server"]

# A token that appears only in files the gate must refuse: no response of
# the guarded server may contain it (or the start of any refused file).
SECRET = "S3CR3T-7f3a9c"
CSV = f"{SECRET},alice,4242\nrow,bob,17\n".encode()
CAP = 64 * 1024
# A tiny valid PNG followed by the secret: an image a notebook can embed.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
) + SECRET.encode()

CM_CLASSES = {
    "AsyncLargeFileManager": "jupyter_server.services.contents.largefilemanager.AsyncLargeFileManager",
    "LargeFileManager": "jupyter_server.services.contents.largefilemanager.LargeFileManager",
    "FileContentsManager": "jupyter_server.services.contents.filemanager.FileContentsManager",
    "AsyncFileContentsManager": "jupyter_server.services.contents.filemanager.AsyncFileContentsManager",
}


def notebook_bytes(nb: nbformat.NotebookNode) -> bytes:
    return nbformat.writes(nb).encode()


def valid_notebook(text: str = "print('hello')") -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell("# A notebook"), new_code_cell(text)]
    return nb


@pytest.fixture
def server_mode() -> str:
    """hubwarden: the extension loaded; stock: the same server without it."""
    return "hubwarden"


@pytest.fixture
def cm_class() -> str:
    return "AsyncLargeFileManager"


@pytest.fixture
def extra_config() -> dict:
    return {}


@pytest.fixture
def jp_server_config(server_mode, cm_class, extra_config):
    cfg: dict = {
        "ServerApp": {
            "jpserver_extensions": {"hubwarden_notebook": server_mode == "hubwarden"},
            "contents_manager_class": CM_CLASSES[cm_class],
            # The extension's failures must fail the test, not be logged.
            "reraise_server_extension_failures": True,
        },
        # pytest runs as root here: the start-up check has its own tests
        # (test_lockdown.py) that run the server as an unprivileged user.
        "HubwardenNotebook": {"lockdown_check": False, "max_notebook_size": CAP},
    }
    for section, values in extra_config.items():
        sect = cfg.setdefault(section, {})
        for k, v in values.items():
            if isinstance(v, dict) and isinstance(sect.get(k), dict):
                sect[k] = {**sect[k], **v}
            else:
                sect[k] = v
    return cfg


@pytest.fixture
def files(jp_root_dir):
    """Populate the server's root directory; returns {name: bytes or None}."""
    root = str(jp_root_dir)
    made: dict[str, bytes | None] = {}

    def put(name: str, data: bytes) -> None:
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        made[name] = data

    put("data.csv", CSV)
    put("nb.ipynb", notebook_bytes(valid_notebook()))
    put("UPPER.IPYNB", notebook_bytes(valid_notebook()))
    put("renamed.ipynb", CSV)  # a CSV renamed to .ipynb
    put("json.ipynb", json.dumps({"nbformat": 4, "data": SECRET}).encode())
    put("object.ipynb", json.dumps({"secret": SECRET}).encode())
    bad = valid_notebook()
    bad.cells[1]["smuggled"] = SECRET  # not in the schema
    put("invalid.ipynb", json.dumps(bad).encode())
    put("latin1.ipynb", SECRET.encode() + b"\xe9\xff")
    big = valid_notebook()
    big.cells[1].outputs = [new_output("stream", name="stdout", text=SECRET + "x" * CAP)]
    put("big.ipynb", notebook_bytes(big))
    small = valid_notebook()
    small.cells[1].outputs = [new_output("stream", name="stdout", text="y" * (CAP // 2))]
    put("under-cap.ipynb", notebook_bytes(small))
    put("sub/deep.csv", CSV)
    put(".hidden.csv", CSV)
    put("secret.png", PNG)
    embed = valid_notebook()
    embed.cells = [new_markdown_cell("![x](secret.png)")]
    put("embed.ipynb", notebook_bytes(embed))
    for name, target in [
        ("link.ipynb", "data.csv"),
        ("nblink.ipynb", "nb.ipynb"),
        ("zero.ipynb", "/dev/zero"),
        ("passwd.ipynb", "/etc/passwd"),
    ]:
        os.symlink(target, os.path.join(root, name))
        made[name] = None
    os.mkfifo(os.path.join(root, "fifo.ipynb"))
    made["fifo.ipynb"] = None
    return made


@pytest.fixture
def ask(jp_serverapp, http_server_client, jp_auth_header, jp_base_url):
    from helpers import make_ask

    return make_ask(http_server_client, jp_auth_header, jp_base_url)
