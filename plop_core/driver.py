"""Who runs a sweep (host, pid, process start time), and whether that process is still alive.

Why: a sweep's driver can die without running its `finally` (kill -9, the OOM killer, a power cut),
leaving its MLflow parent run and its Prefect flow run RUNNING forever. Every run a driver opens is
tagged with `identity()`; the next sweep asks `is_gone(tags)` and marks the runs of a dead driver
KILLED / Crashed. The start time guards against pid reuse; a driver on another host is never judged
(it may be alive), so only runs started on this host are ever marked.
"""

from __future__ import annotations

import os
import socket


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state first), or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_ticks(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None without /proc."""
    stat = _stat(pid)
    return stat[19] if stat else None


def identity(pid: int | None = None) -> dict[str, str]:
    """This process as a driver: {'host', 'pid', 'started'} (strings, ready to be tags)."""
    pid = pid or os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "started": _start_ticks(pid) or ""}


def is_gone(host: str | None, pid: str | int | None, started: str | None = None) -> bool:
    """True only when the driver ran on this host and its process no longer exists (or the pid now
    belongs to a younger process). Unknown or remote drivers are never judged gone."""
    if not host or not pid or host != socket.gethostname():
        return False
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False  # exists (someone else's) or not a pid: do not judge
    stat = _stat(pid)
    if stat is None:
        return False
    if stat[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by its parent
        return True
    return bool(started) and stat[19] != started
