"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one.

Why one module: every artifact plop writes (Parquet tables, JSON, PNGs, samples, adapters, caches)
goes through here, so a killed run leaves nothing half-written, and files get ordinary permissions
(`mkstemp`/`mkdtemp` create 0600/0700 entries, which would make a shared results folder unreadable
to teammates; we apply the process umask as a normal `open()` would). Standard library only, so cheap
modules (data, baselines) can use it without importing pyarrow or torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Temp names carry their writer (pid + a hash of the host): `.NAME.w<pid>-<host8>.XXXX.tmp`, so a later run
# can remove exactly the leftovers of writers that died mid-write (kill -9) and never a live writer's file.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP = re.compile(r"^\..+\.w(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[^.]*(?:\.[a-z]+)*\.tmp$|"
                   r"^\..+\.w(?P<dpid>\d+)-(?P<dhost>[0-9a-f]{8})\.[^.]*\.tmpdir$")


def _writer() -> str:
    return f"w{os.getpid()}-{_HOST}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def normal_permissions(path: Path) -> None:
    """Give a file, or a folder and everything in it, the permissions a plain open()/mkdir() would."""
    mask = _umask()
    if path.is_dir():
        for p in [path, *path.rglob("*")]:
            p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
    else:
        path.chmod(0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp file path next to `path`; on success it replaces `path`, on error it is removed.

        with atomic_path(out / "types.parquet") as tmp:
            pq.write_table(table, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{_writer()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        normal_permissions(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None and e.errno is not None:  # a failed write/flush: name the file being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder next to `path`; on success it replaces the folder `path` (old one removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_writer()}.", suffix=".tmpdir", dir=path.parent))
    try:
        yield tmp
        normal_permissions(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text to `path` atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def _dead_writer(pid: str, host: str) -> bool:
    if host != _HOST:
        return False  # another machine's writer (a shared root): never judged
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return False


def remove_dead_temps(root: str | Path) -> list[Path]:
    """Remove the temp files and folders under `root` left by writers on this host that died mid-write
    (their pid is gone); a live writer's temp file is kept. Returns what was removed."""
    removed = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*filenames, *dirnames]:
            m = _TEMP.match(name)
            if not m:
                continue
            pid, host = (m["pid"], m["host"]) if m["pid"] else (m["dpid"], m["dhost"])
            if _dead_writer(pid, host):
                p = Path(dirpath) / name
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
        dirnames[:] = [d for d in dirnames if not _TEMP.match(d)]
    return removed
