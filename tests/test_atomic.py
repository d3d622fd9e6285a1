"""Atomic writes: all or nothing, no temp files left, ordinary permissions (not mkstemp's 0600)."""

import os
import stat

import pytest

from plop_core.atomic import atomic_dir, atomic_path, atomic_write_text


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_write_replaces_and_applies_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "a" / "x.json", "one")
        atomic_write_text(p, "two")
        assert p.read_text() == "two" and _mode(p) == 0o644
        with atomic_dir(tmp_path / "adapter") as d:
            (d / "w.safetensors").write_bytes(b"x")
        assert _mode(tmp_path / "adapter") == 0o755 and _mode(tmp_path / "adapter" / "w.safetensors") == 0o644
    finally:
        os.umask(old)
    assert sorted(x.name for x in (tmp_path / "a").iterdir()) == ["x.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = atomic_write_text(tmp_path / "x.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert p.read_text() == "old" and [x.name for x in tmp_path.iterdir()] == ["x.txt"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("k")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as d:
        (d / "new").write_text("n")
        raise RuntimeError("killed")
    assert [x.name for x in (tmp_path / "d").iterdir()] == ["keep"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["d", "x.txt"]
