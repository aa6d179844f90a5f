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


@pytest.mark.parametrize("change, writable, want", [
    ({"uid": 0}, None, "runs as root"),
    ({"user_site_enabled": True}, None, "user site-packages are on the server's sys.path"),
    ({"sys_path": [HOME]}, None, "sys.path entry in the home directory: /home/jovyan"),
    ({"sys_path": [""]}, None, None),  # cwd: decided by where the test runs
    ({}, f"{ENV}/lib/python3.11/site-packages", "sys.path entry writable by the user"),
    ({}, f"{ENV}/bin", "the server's environment is writable by the user: /opt/conda/bin"),
    ({"config_file_paths": [f"{HOME}/.jupyter"]}, None, "server config path is in the home directory"),
    ({}, "/etc/jupyter", "a server config path is writable by the user: /etc/jupyter"),
    ({"data_paths": [f"{HOME}/.local/share/jupyter"]}, None, "data path (labextensions, kernelspecs) is in the home"),
    ({}, "/usr/share/jupyter", "data path (labextensions, kernelspecs) is writable by the user"),
    ({"pycache_prefix": f"{HOME}/.cache/pyc"}, None, "bytecode cache prefix is the user's"),
    ({"preload": {"LD_PRELOAD": "/home/jovyan/x.so"}}, None, "LD_PRELOAD is set for the server"),
    ({"dumpable": True}, None, "the server process is dumpable"),
])
def test_each_problem_is_named(change, writable, want):
    got = problems(facts(**change), lambda p: p == writable)
    if want is None:
        return
    assert any(want in p for p in got), got
    assert len(got) == 1, got


def test_writable_counts_a_missing_path_by_its_ancestor(tmp_path):
    assert lockdown.writable(str(tmp_path / "missing" / "deeper"))
    assert not lockdown.writable("/proc/1/missing/x") or os.geteuid() == 0


def test_not_dumpable_after_set():
    assert lockdown.set_not_dumpable()
    assert lockdown.dumpable() is False


def test_walk_finds_a_writable_file(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("x = 1\n")
    found = lockdown.walk_writable([str(tmp_path)], home="/nonexistent")
    assert str(tmp_path) in found  # root may write anything: the walk reports it
