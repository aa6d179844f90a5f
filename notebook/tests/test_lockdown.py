"""The start-up check's rules, on constructed facts, and the real check of
this process."""

from __future__ import annotations

import os

import pytest
from hubwarden_notebook import lockdown
from hubwarden_notebook.lockdown import Facts, problems

HOME = "/home/jovyan"
ENV = "/opt/conda"


def facts(**kw) -> Facts:
    base = dict(
        uid=1000, home=HOME, user_site_enabled=False,
        sys_path=[f"{ENV}/lib/python3.11", f"{ENV}/lib/python3.11/site-packages"],
        env_paths=[ENV, f"{ENV}/bin"], config_file_paths=["/etc/jupyter", f"{ENV}/etc/jupyter"],
        data_paths=[f"{ENV}/share/jupyter", "/usr/share/jupyter"], pycache_prefix=None, dumpable=False,
    )
    base.update(kw)
    return Facts(**base)


def never(path: str) -> bool:
    return False


def test_locked_has_no_problem():
    assert problems(facts(), never) == []


def test_admin_loader_settings_pass():
    # A root-owned library path (CUDA) and a preload by name (jemalloc), as
    # images set them, are not the user's.
    f = facts(preload={"LD_LIBRARY_PATH": "/usr/local/cuda/lib64", "LD_PRELOAD": "libjemalloc.so.2"},
              mapped=["/usr/bin/python3.11", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"],
              admin_paths=[ENV, "/etc/jupyter"], lab_dir="/opt/lab")
    assert problems(f, never) == []


def test_mapped_files_reads_executable_file_mappings(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "55d0-55d1 r--p 00000000 08:01 1 /usr/bin/python3.11\n"
        "55d1-55d2 r-xp 00001000 08:01 1 /usr/bin/python3.11\n"
        "7f00-7f01 r-xp 00000000 08:01 2 /home/u/.p/p.so (deleted)\n"
        "7f01-7f02 rw-s 00000000 00:05 3 /dev/zero (deleted)\n"
        "7f02-7f03 r-xp 00000000 00:05 4 /dev/zero\n"
        "7f03-7f04 r--p 00000000 08:01 5 /usr/lib/locale/locale-archive\n"
        "7f04-7f05 rw-p 00000000 00:00 0 [heap]\n"
        "7f05-7f06 r-xp 00000000 00:00 0 [vdso]\n"
    )
    assert lockdown.mapped_files(str(maps)) == ["/usr/bin/python3.11", "/home/u/.p/p.so"]


def test_server_config_paths(monkeypatch, tmp_path):
    home = str(tmp_path / "home")
    monkeypatch.setenv("HOME", home)
    monkeypatch.delenv("JUPYTER_CONFIG_DIR", raising=False)
    monkeypatch.delenv("JUPYTER_NO_CONFIG", raising=False)
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", f"/tmp/user-cfg:{home}/cfg")
    paths = lockdown.server_config_paths(home)
    assert paths[0] == "/tmp/user-cfg"  # JUPYTER_CONFIG_PATH first; what is under HOME dropped
    assert not any(p.startswith(home) for p in paths)
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", "/tmp/user-dir")
    assert "/tmp/user-dir" in lockdown.server_config_paths(home)


@pytest.mark.parametrize("change, writable, want", [
    ({"uid": 0}, None, "runs as root"),
    ({"user_site_enabled": True}, None, "user site-packages are on the server's sys.path"),
    ({"sys_path": [HOME]}, None, "sys.path entry in the home directory: /home/jovyan"),
    ({"sys_path": [""], "cwd": HOME}, None, "sys.path entry in the home directory: /home/jovyan"),
    ({}, f"{ENV}/lib/python3.11/site-packages", "sys.path entry writable by the user"),
    ({}, f"{ENV}/bin", "the server's environment is writable by the user: /opt/conda/bin"),
    ({"config_file_paths": [f"{HOME}/.jupyter"]}, None, "server config path is in the home directory"),
    ({}, "/etc/jupyter", "a server config path is writable by the user: /etc/jupyter"),
    ({"data_paths": [f"{HOME}/.local/share/jupyter"]}, None, "data path (labextensions, kernelspecs) is in the home"),
    ({}, "/usr/share/jupyter", "data path (labextensions, kernelspecs) is writable by the user"),
    ({"pycache_prefix": f"{HOME}/.cache/pyc"}, None, "bytecode cache prefix is the user's"),
    ({"preload": {"LD_PRELOAD": "/home/jovyan/x.so"}}, None, "LD_PRELOAD names /home/jovyan/x.so"),
    ({"preload": {"LD_PRELOAD": "./x.so"}, "cwd": HOME}, None, "LD_PRELOAD names /home/jovyan/x.so"),
    ({"preload": {"LD_PRELOAD": "/tmp/x.so"}}, "/tmp/x.so", "LD_PRELOAD names /tmp/x.so"),
    ({"preload": {"LD_AUDIT": "/opt/a.so:/home/jovyan/b.so"}}, None, "LD_AUDIT names /home/jovyan/b.so"),
    ({"preload": {"LD_LIBRARY_PATH": "/usr/local/cuda/lib64::"}, "cwd": HOME}, None,
     "LD_LIBRARY_PATH names /home/jovyan"),  # an empty entry is the current directory
    ({"preload": {"GCONV_PATH": "/tmp/gconv"}}, "/tmp/gconv", "GCONV_PATH names /tmp/gconv"),
    ({"mapped": ["/usr/lib/libc.so.6", f"{HOME}/.p/p.so"]}, None, "mapped into the server process: /home/jovyan/.p/p.so"),
    ({"mapped": ["/usr/lib/libc.so.6", "/tmp/p.so"]}, "/tmp/p.so", "mapped into the server process: /tmp/p.so"),
    ({"no_config": True}, None, "JUPYTER_NO_CONFIG is set"),
    ({"lab_dir": "/tmp/lab"}, "/tmp/lab", "JUPYTERLAB_DIR (/tmp/lab) is the user's"),
    ({"lab_dir": f"{HOME}/lab"}, None, "JUPYTERLAB_DIR (/home/jovyan/lab) is the user's"),
    ({"home": "/", "admin_paths": [ENV, "/etc/jupyter"]}, None, "HOME (/) contains /opt/conda"),
    ({"home": "/opt", "admin_paths": [ENV, "/etc/jupyter"]}, None, "HOME (/opt) contains /opt/conda"),
    ({"dumpable": True}, None, "the server process is dumpable"),
])
def test_each_problem_is_named(change, writable, want):
    got = problems(facts(**change), lambda p: p == writable)
    assert any(want in p for p in got), got
    assert len(got) == 1, got


def test_writable_counts_a_missing_path_by_its_ancestor(tmp_path):
    assert lockdown.writable(str(tmp_path / "missing" / "deeper"))
    assert not lockdown.writable("/proc/1/missing/x") or os.geteuid() == 0


def test_not_dumpable_after_set():
    assert lockdown.set_not_dumpable()
    assert lockdown.dumpable() is False


def test_walk_follows_links_to_writable_directories(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "mod.py").write_text("x = 1\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(target)
    (root / "loop").symlink_to(root)
    found = lockdown.walk_writable([str(root)], home="/nonexistent", limit=100)
    assert str(root / "link" / "mod.py") in found
    assert len(found) == len(set(os.path.realpath(p) for p in found))  # each real file once


def test_walk_finds_a_writable_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    found = lockdown.walk_writable([str(tmp_path)], home="/nonexistent")
    assert str(tmp_path) in found  # root may write anything: the walk reports it
