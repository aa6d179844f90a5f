"""Every download form, through the server's own handlers: refused with the
extension, and (the control) served without it. No refusal echoes a byte of
the refused file."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from conftest import SECRET, valid_notebook
from helpers import leaked
from nbformat.v4 import new_markdown_cell

# (id, method, raw path with query, request headers, what the stock server does)
#   "leak": answers with bytes of the refused file (whatever its status:
#           jupyter-server's notebook errors quote the file)
#   "ok":   answers below 400 without file bytes (HEAD, a hash, a redirect
#           to /files/, which the files forms test)
FORMS = [
    ("files", "GET", "files/data.csv", {}, "leak"),
    ("files-download", "GET", "files/data.csv?download=1", {}, "leak"),
    ("files-range", "GET", "files/data.csv", {"Range": "bytes=0-9"}, "leak"),
    ("files-head", "HEAD", "files/data.csv", {}, "ok"),
    ("files-encoded-name", "GET", "files/%64ata%2Ecsv", {}, "leak"),
    ("files-encoded-slash", "GET", "files/sub%2Fdeep.csv", {}, "leak"),
    ("files-dotdot", "GET", "files/sub/..%2Fdata.csv", {}, "leak"),
    ("files-dot", "GET", "files/./data.csv", {}, "leak"),
    ("files-renamed-csv", "GET", "files/renamed.ipynb", {}, "leak"),
    ("files-symlink-csv", "GET", "files/link.ipynb", {}, "leak"),
    ("files-symlink-outside-root", "GET", "files/passwd.ipynb", {}, "leak"),
    ("files-image", "GET", "files/secret.png", {}, "leak"),
    ("contents-default", "GET", "api/contents/data.csv", {}, "leak"),
    ("contents-file", "GET", "api/contents/data.csv?type=file", {}, "leak"),
    ("contents-file-text", "GET", "api/contents/data.csv?type=file&format=text", {}, "leak"),
    ("contents-file-base64", "GET", "api/contents/data.csv?type=file&format=base64", {}, "leak"),
    ("contents-as-notebook", "GET", "api/contents/data.csv?type=notebook", {}, "leak"),
    ("contents-unknown-type", "GET", "api/contents/data.csv?type=FILE", {}, "leak"),
    ("contents-duplicate-content-arg", "GET", "api/contents/data.csv?content=0&content=1", {}, "leak"),
    ("contents-hash", "GET", "api/contents/data.csv?hash=1", {}, "leak"),
    ("contents-hash-only", "GET", "api/contents/data.csv?content=0&hash=1", {}, "ok"),
    ("contents-subdir", "GET", "api/contents/sub/deep.csv?type=file&format=base64", {}, "leak"),
    ("contents-encoded", "GET", "api/contents/sub%2Fdeep.csv?type=file", {}, "leak"),
    ("contents-image", "GET", "api/contents/secret.png?type=file&format=base64", {}, "leak"),
    ("renamed-csv-default", "GET", "api/contents/renamed.ipynb", {}, "leak"),
    ("renamed-csv-notebook", "GET", "api/contents/renamed.ipynb?type=notebook", {}, "leak"),
    ("renamed-csv-file", "GET", "api/contents/renamed.ipynb?type=file", {}, "leak"),
    ("renamed-csv-base64", "GET", "api/contents/renamed.ipynb?type=file&format=base64", {}, "leak"),
    ("json-not-notebook", "GET", "api/contents/json.ipynb?type=file", {}, "leak"),
    ("json-object-file", "GET", "api/contents/object.ipynb?type=file", {}, "leak"),
    ("schema-invalid-notebook", "GET", "api/contents/invalid.ipynb", {}, "leak"),
    ("not-utf8", "GET", "api/contents/latin1.ipynb?type=file", {}, "leak"),
    ("symlink-csv-notebook", "GET", "api/contents/link.ipynb", {}, "leak"),
    ("symlink-outside-root", "GET", "api/contents/passwd.ipynb?type=file", {}, "leak"),
    ("oversized-notebook", "GET", "api/contents/big.ipynb", {}, "leak"),
    ("oversized-notebook-file", "GET", "api/contents/big.ipynb?type=file&format=base64", {}, "leak"),
    ("oversized-notebook-files", "GET", "files/big.ipynb", {}, "leak"),
    ("nbconvert-csv", "GET", "nbconvert/html/data.csv", {}, "ok"),
    ("nbconvert-csv-download", "GET", "nbconvert/script/data.csv?download=true", {}, "ok"),
    ("nbconvert-notebook", "GET", "nbconvert/script/nb.ipynb?download=true", {}, "ok"),
    ("nbconvert-embedded-image", "GET", "nbconvert/html/embed.ipynb", {}, "leak"),
    ("kernelspec-file", "GET", "kernelspecs/leaky/secret.csv", {}, "leak"),
    ("kernelspec-file-head", "HEAD", "kernelspecs/leaky/secret.csv", {}, "ok"),
]

# Exporters read files themselves: HTMLExporter.embed_images is an admin's
# option (off by default) that shows it; both servers run with it on.
EMBED = {"HTMLExporter": {"embed_images": True}}


@pytest.fixture
def leaky_kernelspec(jp_data_dir):
    """A kernelspec whose directory holds a data file (user kernelspecs live
    in ~/.local/share/jupyter/kernels)."""
    d = jp_data_dir / "kernels" / "leaky"
    d.mkdir(parents=True)
    (d / "kernel.json").write_text(
        json.dumps({"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "leaky", "language": "python"})
    )
    (d / "secret.csv").write_text(f"{SECRET},1\n")
    return d


@pytest.mark.parametrize("extra_config", [EMBED])
@pytest.mark.parametrize("server_mode", ["hubwarden", "stock"])
@pytest.mark.parametrize("form", FORMS, ids=[f[0] for f in FORMS])
async def test_download_form(form, server_mode, files, leaky_kernelspec, ask):
    _, method, path, headers, stock = form
    a = await ask(path, method=method, headers=headers, follow_redirects=False)
    if server_mode == "stock":
        # The control: the same request gets the bytes (or succeeds).
        if stock == "leak":
            assert leaked(a.body), f"control: {method} {path} -> {a.status} without the file's bytes"
        else:
            assert a.status < 400, f"control: {method} {path} -> {a.status}"
        return
    assert a.status in (403, 404), f"{method} {path} -> {a.status}"
    assert not leaked(a.body), f"{method} {path} leaked file bytes: {a.body[:200]!r}"


@pytest.mark.parametrize("server_mode", ["hubwarden", "stock"])
async def test_nbconvert_post_embedding_other_files(server_mode, files, jp_root_dir, ask, monkeypatch):
    """POST /nbconvert converts a notebook the client sends; with image
    embedding on, its markdown pulls files from the server's directory."""
    monkeypatch.chdir(jp_root_dir)
    nb = valid_notebook()
    nb.cells = [new_markdown_cell("![x](secret.png)")]
    a = await ask(
        "nbconvert/html", method="POST",
        body={"name": "x.ipynb", "content": nb},
    )
    if server_mode == "stock":
        assert a.status == 200 and leaked(a.body), f"control: {a.status} {a.body[:300]!r}"
    else:
        assert a.status == 403 and not leaked(a.body)


test_nbconvert_post_embedding_other_files = pytest.mark.parametrize("extra_config", [EMBED])(
    test_nbconvert_post_embedding_other_files
)


@pytest.mark.parametrize("server_mode", ["hubwarden", "stock"])
async def test_view_page_points_at_refused_files(server_mode, files, ask):
    page = await ask("view/data.csv")
    assert page.status == 200 and not leaked(page.body)
    src = re.search(rb'<iframe[^>]* src="([^"]+)"', page.body)
    assert src, page.body[:500]
    url = src.group(1).decode()
    # The iframe's URL is absolute (base URL included).
    a = await ask(url.split("/files/", 1)[1].join(["files/", ""]))
    if server_mode == "stock":
        assert a.status == 200 and leaked(a.body)
    else:
        assert a.status == 403 and not leaked(a.body)


@pytest.mark.parametrize("extra_config", [{"ServerApp": {"jpserver_extensions": {"nbclassic": True}}}])
@pytest.mark.parametrize("server_mode", ["hubwarden", "stock"])
async def test_nbclassic_notebook_page_of_a_csv(server_mode, files, ask):
    """nbclassic's /notebooks/<path> sends a non-notebook to /files/."""
    a = await asyncio.wait_for(ask("notebooks/data.csv", follow_redirects=False), timeout=30)
    assert a.status == 302 and not leaked(a.body), (a.status, a.body[:200])
    target = a.headers["Location"].split("/files/", 1)[1]
    b = await ask("files/" + target)
    if server_mode == "stock":
        assert leaked(b.body)
    else:
        assert b.status == 403 and not leaked(b.body)


@pytest.mark.parametrize("extra_config", [{"ContentsManager": {"allow_hidden": True}}])
@pytest.mark.parametrize("server_mode", ["hubwarden", "stock"])
async def test_checkpoints(server_mode, files, ask):
    """A checkpoint of a CSV is a CSV under .ipynb_checkpoints: the API lists
    checkpoints (metadata) and never returns their content; reading the
    checkpoint file directly is a download form like any other."""
    made = await ask("api/contents/data.csv/checkpoints", method="POST", body="")
    assert made.status == 201, made.body
    listed = await ask("api/contents/data.csv/checkpoints")
    assert listed.status == 200 and not leaked(listed.body)
    for path in (
        "api/contents/.ipynb_checkpoints/data-checkpoint.csv?type=file",
        "files/.ipynb_checkpoints/data-checkpoint.csv",
    ):
        a = await ask(path)
        if server_mode == "stock":
            assert leaked(a.body), path
        else:
            assert a.status == 403 and not leaked(a.body), path


@pytest.mark.parametrize("path", ["fifo.ipynb", "zero.ipynb"])
async def test_fifo_and_device_refused_promptly(path, files, ask):
    """A FIFO would block a plain open() forever and /dev/zero never ends; the
    stock server hangs on both, so there is no control here."""
    for p in (f"api/contents/{path}", f"api/contents/{path}?type=file", f"files/{path}"):
        a = await asyncio.wait_for(ask(p), timeout=20)
        assert a.status == 403, (p, a.status, a.body)
        assert b"not a regular file" in a.body


async def test_refusal_names_path_and_reason_only(files, ask):
    a = await ask("api/contents/renamed.ipynb")
    msg = a.json["message"]
    assert msg == "hubwarden: 'renamed.ipynb': content not served: not JSON, so not a notebook"
    a = await ask("api/contents/data.csv")
    assert a.json["message"].endswith("only notebooks (*.ipynb) are served")
    a = await ask("api/contents/big.ipynb")
    assert "larger than the notebook size cap of 65536 bytes" in a.json["message"]


async def test_upper_case_suffix_refused(files, ask):
    """The server treats only *.ipynb as notebooks (case-sensitive, as
    jupyter-server does): a valid notebook named .IPYNB is refused too."""
    a = await ask("api/contents/UPPER.IPYNB?type=file")
    assert a.status == 403


async def test_api_nbconvert_format_list_stays(files, ask):
    a = await ask("api/nbconvert")
    assert a.status == 200 and "html" in a.json


async def test_kernelspec_logo_served(files, leaky_kernelspec, ask):
    png = leaky_kernelspec / "logo-64x64.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nlogo")
    a = await ask("kernelspecs/leaky/logo-64x64.png")
    assert a.status == 200 and a.body == png.read_bytes()


def test_no_fixture_file_left_unrefused(files):
    """Every refused fixture file is one the markers recognise."""
    for name, data in files.items():
        if data is None or name in ("nb.ipynb", "UPPER.IPYNB", "under-cap.ipynb", "embed.ipynb"):
            continue
        if name in ("big.ipynb", "invalid.ipynb", "json.ipynb", "object.ipynb"):
            assert SECRET.encode() in data, name
        else:
            assert leaked(data), name


def test_forms_cover_every_route_family():
    routes = {path.split("/")[0] if not path.startswith("api/") else "/".join(path.split("/")[:2])
              for _, _, path, _, _ in FORMS}
    assert {"files", "api/contents", "nbconvert", "kernelspecs"} <= routes
