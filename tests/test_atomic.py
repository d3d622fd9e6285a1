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


def test_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    """Temp names carry the writer; a sweep removes the leftovers of writers that died (kill -9 mid-write)
    on this host, never a live writer's file, nor one written on another host."""
    import os
    import subprocess
    import sys

    from plop_core import atomic

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with atomic_path(tmp_path / "live.parquet", ".parquet.tmp") as live:  # this process, mid-write
        live.write_text("partial")
        assert live.name.startswith(f".live.parquet.w{os.getpid()}-")
        dead = tmp_path / "cells" / live.name.replace(f"w{os.getpid()}-", f"w{gone.pid}-").replace("live", "dead")
        dead.parent.mkdir()
        dead.write_text("partial")
        remote = tmp_path / f".x.json.w{gone.pid}-00000000.abcd.tmp"
        remote.write_text("partial")
        dead_dir = tmp_path / f".adapter.w{gone.pid}-{atomic._HOST}.k2j4.tmpdir"
        dead_dir.mkdir()
        (dead_dir / "adapter_model.safetensors").write_text("partial")
        removed = atomic.remove_dead_temps(tmp_path)
        assert sorted(removed) == sorted([dead, dead_dir]) and live.exists() and remote.exists()
    assert not live.exists()
