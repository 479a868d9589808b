"""The bottom layer: atomic writes honour the umask and leave nothing behind; the cache folder
follows $DVAEQ_CACHE_DIR, then $XDG_CACHE_HOME."""

import os

import pytest

from storage.cache import cache_root
from storage.files import umask, write_atomic


@pytest.mark.parametrize("content, expected", [("text", b"text"), (b"bytes", b"bytes"),
                                               (lambda handle: handle.write(b"writer"), b"writer")])
def test_atomic_writes_take_the_umask_and_leave_nothing_behind(tmp_path, content, expected):
    target = tmp_path / "out.bin"
    previous = os.umask(0o027)
    try:
        assert umask() == 0o027
        write_atomic(target, content)
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o640
    assert target.read_bytes() == expected
    with pytest.raises(ZeroDivisionError):  # a failing writer keeps the old file, no orphan
        write_atomic(target, lambda handle: 1 / 0)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("DVAEQ_CACHE_DIR", str(tmp_path / "dvaeq"))
    assert cache_root() == tmp_path / "dvaeq"
    monkeypatch.delenv("DVAEQ_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "dvae-q"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "dvae-q"
