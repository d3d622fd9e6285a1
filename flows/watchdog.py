"""Run a command that must not outlive the process that started it (the embedded Prefect server).

Why: `plop sweep` starts a local `prefect server` for the duration of a sweep. If the driver is killed
with SIGKILL (OOM killer, `kill -9`, a scheduler's hard timeout), its `finally` never runs and the
server would stay listening forever. This wrapper runs the command in its own process group (it is
the group leader), polls its parent every 0.2 s, and when the parent is gone (or it receives SIGINT
or SIGTERM) it stops the command with SIGINT, waits `--grace` seconds, then SIGKILLs the whole group
(the command's own children included). Standard library only; run it by path:

    python flows/watchdog.py --parent 1234 --grace 10 -- python -m prefect server start --port 4242
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.2


def parent_alive(pid: int) -> bool:
    """True while `pid` is still our parent (after it dies we are re-parented to init or a subreaper)."""
    return os.getppid() == pid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parent", type=int, required=True, help="pid whose death stops the command")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGINT and SIGKILL")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)  # lead our own group, so one killpg reaches the command and its children
    stop = {"why": None}

    def on_signal(signum, _frame):
        stop["why"] = signal.Signals(signum).name

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    child = subprocess.Popen(cmd)  # same process group as this wrapper
    while child.poll() is None and stop["why"] is None:
        if not parent_alive(args.parent):
            stop["why"] = f"parent {args.parent} is gone"
            print(f"watchdog: {stop['why']}; stopping {cmd[:4]}", file=sys.stderr, flush=True)
        time.sleep(POLL_S)
    code = child.poll()
    if code is None:
        child.send_signal(signal.SIGINT)  # SIGINT shuts uvicorn down cleanly
        deadline = time.monotonic() + args.grace
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        code = child.poll()
    # whatever is left in the group (the command's children, a command that ignored SIGINT) goes now;
    # this wrapper is in the group too, so when anything is left it ends here as well
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    leftovers = code is None or _group_has_others()
    if leftovers:
        sys.stderr.flush()
        os.killpg(0, signal.SIGKILL)
    return code or 0


def _group_has_others() -> bool:
    """True when a process other than this wrapper is still in our process group (Linux: /proc)."""
    me, pgid = os.getpid(), os.getpgid(0)
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return True  # no /proc: assume leftovers and kill the group
    for pid in pids:
        if pid == me:
            continue
        try:
            if os.getpgid(pid) == pgid:
                return True
        except OSError:
            continue
    return False


if __name__ == "__main__":
    sys.exit(main())
