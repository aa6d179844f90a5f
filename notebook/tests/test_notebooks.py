"""What must keep working with the gate: notebooks open, run and save (every
supported contents manager), listings, uploads, renames, copies, deletes;
and the JupyterLab page config."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re

import pytest
from conftest import CSV, notebook_bytes, valid_notebook
from helpers import leaked
from jupyter_client.session import Session

ALL_CMS = ["AsyncLargeFileManager", "LargeFileManager", "FileContentsManager", "AsyncFileContentsManager"]


@pytest.mark.parametrize("cm_class", ALL_CMS)
async def test_notebook_opens_in_every_form(cm_class, files, ask):
    raw = files["nb.ipynb"]
    a = await ask("api/contents/nb.ipynb")
    assert a.status == 200 and a.json["type"] == "notebook"
    assert a.json["content"]["cells"][1]["source"] == "print('hello')"
    a = await ask("api/contents/nb.ipynb?type=file")
    assert a.status == 200 and a.json["content"].encode() == raw and a.json["format"] == "text"
    a = await ask("api/contents/nb.ipynb?type=file&format=base64")
    assert base64.b64decode(a.json["content"]) == raw
    a = await ask("api/contents/nb.ipynb?hash=1")
    assert a.json["hash"] == hashlib.sha256(raw).hexdigest()
    a = await ask("files/nb.ipynb")
    assert a.status == 200 and a.body == raw
    a = await ask("files/nb.ipynb", method="HEAD")
    assert a.status == 200
    a = await ask("files/nblink.ipynb")
    assert a.status == 200 and a.body == raw
    a = await ask("api/contents/under-cap.ipynb")
    assert a.status == 200


@pytest.mark.parametrize("cm_class", ALL_CMS)
async def test_files_refused_in_every_manager(cm_class, files, ask):
    for path in ("api/contents/data.csv?type=file", "api/contents/renamed.ipynb", "files/data.csv"):
        a = await ask(path)
        assert a.status == 403 and not leaked(a.body), (path, a.status)


async def test_listing_shows_everything(files, ask):
    a = await ask("api/contents")
    assert a.status == 200
    names = {e["name"]: e for e in a.json["content"]}
    for n in ("data.csv", "nb.ipynb", "renamed.ipynb", "big.ipynb", "sub", "secret.png"):
        assert n in names, n
    assert names["data.csv"]["size"] == len(CSV) and names["data.csv"]["content"] is None
    assert not leaked(a.body)


async def test_save_upload_rename_copy_delete(files, ask):
    nb = json.loads(notebook_bytes(valid_notebook("1 + 1")))
    a = await ask("api/contents/new.ipynb", method="PUT", body={"type": "notebook", "format": "json", "content": nb})
    assert a.status == 201, a.body
    a = await ask("api/contents/new.ipynb")
    assert a.json["content"]["cells"][1]["source"] == "1 + 1"
    # Upload any file, as before; its content is then refused.
    a = await ask("api/contents/up.csv", method="PUT",
                  body={"type": "file", "format": "base64", "content": base64.b64encode(CSV).decode()})
    assert a.status == 201
    assert (await ask("api/contents/up.csv?type=file")).status == 403
    # Rename a CSV to .ipynb: listed, still refused.
    a = await ask("api/contents/up.csv", method="PATCH", body={"path": "up.ipynb"})
    assert a.status == 200 and a.json["name"] == "up.ipynb"
    for p in ("api/contents/up.ipynb", "api/contents/up.ipynb?type=file&format=base64", "files/up.ipynb"):
        r = await ask(p)
        assert r.status == 403 and not leaked(r.body), p
    # Copy (Duplicate) works for any file; the copy is refused like the original.
    a = await ask("api/contents", method="POST", body={"copy_from": "data.csv"})
    assert a.status == 201 and not leaked(a.body), a.body
    copy = a.json["path"]
    assert (await ask(f"api/contents/{copy}?type=file")).status == 403
    a = await ask("api/contents", method="POST", body={"copy_from": "nb.ipynb"})
    assert a.status == 201
    assert (await ask(f"api/contents/{a.json['path']}")).status == 200
    # Delete.
    assert (await ask(f"api/contents/{copy}", method="DELETE")).status == 204
    assert (await ask(f"api/contents/{copy}?content=0")).status == 404


async def test_notebook_runs(files, ask, jp_ws_fetch):
    """A session for the notebook, its kernel executes code over the websocket."""
    a = await ask("api/sessions", method="POST",
                  body={"path": "nb.ipynb", "type": "notebook", "kernel": {"name": "python3"}})
    assert a.status == 201, a.body
    kid = a.json["kernel"]["id"]
    ws = await jp_ws_fetch("api", "kernels", kid, "channels")
    session = Session()
    msg = session.msg("execute_request", {"code": "print(6 * 7)", "silent": False, "store_history": False,
                                          "user_expressions": {}, "allow_stdin": False})
    msg["channel"] = "shell"
    ws.write_message(json.dumps(msg, default=str))
    out = ""
    replied = idle = False
    # Done when the reply (shell) has come and the kernel is idle again
    # (iopub): the output may arrive after the reply.
    async with asyncio.timeout(60):
        while not (replied and idle):
            reply = json.loads(await ws.read_message())
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                continue
            if reply.get("msg_type") == "stream":
                out += reply["content"]["text"]
            elif reply.get("msg_type") == "execute_reply":
                assert reply["content"]["status"] == "ok"
                replied = True
            elif reply.get("msg_type") == "status" and reply["content"]["execution_state"] == "idle":
                idle = True
    ws.close()
    assert out.strip() == "42"
    await ask(f"api/sessions/{a.json['id']}", method="DELETE")


def page_config(html: bytes) -> dict:
    m = re.search(rb'<script id="jupyter-config-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, html[:300]
    return json.loads(m.group(1))


LAB = {"ServerApp": {"jpserver_extensions": {"jupyterlab": True}}}
LAB_AND_HOOKER = {"ServerApp": {"jpserver_extensions": {"jupyterlab": True, "hubwarden_test_hooker": True}}}


@pytest.fixture
def user_labconfig(jp_config_dir):
    """~/.jupyter/labconfig/page_config.json re-enabling every download
    plugin, as a user would write it (pytest-jupyter's config dir is the
    user config dir)."""
    from hubwarden_notebook.pageconfig import DOWNLOAD_PLUGINS

    d = jp_config_dir / "labconfig"
    d.mkdir(parents=True, exist_ok=True)
    (d / "page_config.json").write_text(json.dumps({
        "disabledExtensions": {p: False for p in DOWNLOAD_PLUGINS},
        "lockedExtensions": {p: False for p in DOWNLOAD_PLUGINS},
    }))


@pytest.mark.parametrize("extra_config", [LAB])
@pytest.mark.parametrize("server_mode", ["hubwarden", "stock"])
async def test_lab_page_config_disables_download_plugins(server_mode, user_labconfig, ask):
    from hubwarden_notebook.pageconfig import DOWNLOAD_PLUGINS

    a = await ask("lab")
    assert a.status == 200
    pc = page_config(a.body)
    disabled = set(pc.get("disabledExtensions", []))
    if server_mode == "stock":
        assert not disabled & set(DOWNLOAD_PLUGINS), "control: the user's labconfig re-enabled them"
        return
    assert set(DOWNLOAD_PLUGINS) <= disabled
    assert set(DOWNLOAD_PLUGINS) <= set(pc.get("lockedExtensions", []))


@pytest.mark.parametrize("extra_config", [LAB_AND_HOOKER])
async def test_hook_survives_a_later_extension_setting_its_own(ask):
    """hubwarden_test_hooker loads after hubwarden_notebook (alphabetical) and
    sets page_config_hook, as JupyterHub's singleuser extension does: its hook
    still runs (it adds a key) and the plugins are still disabled."""
    from hubwarden_notebook.pageconfig import DOWNLOAD_PLUGINS

    pc = page_config((await ask("lab")).body)
    assert pc.get("hookerWasHere") is True
    assert set(DOWNLOAD_PLUGINS) <= set(pc["disabledExtensions"])


@pytest.mark.parametrize("extra_config", [{"ServerApp": {"authorizer_class": "hubwarden_test_hooker.NoKernelsAuthorizer"}}])
async def test_guard_defers_to_the_configured_authorizer(files, ask):
    assert (await ask("api/kernels")).status == 403  # the inner authorizer's refusal
    assert (await ask("api/contents/nb.ipynb")).status == 200
    assert (await ask("api/contents/data.csv")).status == 403


async def test_status_endpoint(files, ask):
    a = await ask("api/hubwarden")
    assert a.status == 200
    s = a.json
    assert s["notebooks_only"] is True and s["contents_manager"].endswith("NotebooksOnlyAsyncLargeFileManager")
    assert s["authorizer"] == "GuardedAuthorizer"
    assert s["page_config_hook"] == "hubwarden_page_config_hook"
    assert s["dumpable"] is False
    assert (await ask("api/hubwarden", auth=False)).status == 403


def test_unsupported_contents_manager_refused():
    from hubwarden_notebook.contents import UnsupportedContentsManager, gate_contents_manager
    from jupyter_server.services.contents.manager import ContentsManager

    with pytest.raises(UnsupportedContentsManager, match="ServerApp.contents_manager_class"):
        gate_contents_manager(ContentsManager(), 1024)
