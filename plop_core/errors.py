"""One place that turns any exception into one or two lines naming the problem and the fix, plus an exit status.

Why: a sweep's user should never have to read a traceback to learn that the disk is full, a weights file
is damaged or a config key is misspelt. The CLI's error boundary (`plop_core.cli.main`) and the flows use
`explain(exc)` for the text and `exit_status(exc)` for the status; `--debug` / PLOP_DEBUG=1 shows the
traceback instead. Known classes are matched by name where importing them would be heavy or circular
(safetensors, yaml, torch, the scorer's NonFiniteActivationError).

    try:
        run()
    except BaseException as e:
        print(f"plop score: error: {explain(e)}", file=sys.stderr)
        sys.exit(exit_status(e))
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading

USAGE = 2  # bad input or environment: the message says what to change
INTERNAL = 1  # unexpected: a bug or a failure we did not anticipate
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
TERMINATED = 143  # SIGTERM (128 + 15): a scheduler or `kill` asked the run to stop

DEBUG_HINT = "rerun with --debug (or PLOP_DEBUG=1) to see the traceback, and report it if it looks like a bug"
_WEIGHTS_FIX = ("for an offline asset run `plop assets verify NAME`, then `plop assets fetch NAME --force`; "
                "for a local folder, save it again with save_pretrained")


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into the Ctrl-C path (`plop sweep` installs the handler), so runs end KILLED/Crashed."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises `Terminated` (the Ctrl-C path: `finally` blocks run, runs end KILLED /
    Crashed, exit 143) instead of killing the process outright. Main thread only (a no-op elsewhere); enter
    it again after `ray.init`, which installs its own SIGTERM handler (`sys.exit(15)`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


def _terminated(exc: BaseException) -> bool:
    return isinstance(exc, Terminated) or "TerminationSignal" in _names(exc)  # Prefect's, inside a flow run


def interruption(exc: BaseException) -> BaseException | None:
    """The Ctrl-C / SIGTERM behind `exc`, if any: a signal handler that raises while C code runs surfaces as
    another error (e.g. `SystemError: ... returned a result with an exception set`) chained to it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt) or _terminated(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class UnitsFailed(RuntimeError):
    """A run finished with some units failed: the others' results are written (partial results). The
    message names each failed unit and why, and where the summary is; exit status 1."""

    def __init__(self, failed: list[dict], n_units: int, summary: str | None = None):
        self.failed, self.n_units, self.summary = list(failed), n_units, summary
        shown = "; ".join(f"{f['unit']}: {_short(f['error'])}" for f in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        where = f"partial results: {n_units - len(self.failed)} unit(s) written, summary {summary}" if summary else \
            f"{n_units - len(self.failed)} unit(s) written"
        super().__init__(f"{len(self.failed)} of {n_units} unit(s) failed: {shown}{more}\n"
                         f"{where}; rerun the same command to retry only the failed units")


def _short(text: str, n: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= n else line[: n - 3] + "..."


def debug_enabled() -> bool:
    """True when PLOP_DEBUG is set to anything but '', '0' or 'false'."""
    return os.environ.get("PLOP_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _first_arg(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__


def _os_error(e: OSError) -> str | None:
    where = f" ({e.filename})" if e.filename else ""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return (f"no space left on the device{where}; free space there, or write elsewhere "
                "(--out / outputs.root), then rerun")
    if e.errno == errno.EROFS:
        return f"read-only file system{where}; write to a writable folder (--out / outputs.root)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied{where}; use a folder you can write (--out / outputs.root) or fix its "
                "permissions")
    if e.errno == errno.ENOENT:
        return f"no such file or folder{where}; check the path"
    if e.errno is not None:
        return f"{e.strerror or 'operating-system error'}{where} (errno {errno.errorcode.get(e.errno, e.errno)})"
    return None  # an OSError raised by plop with its own message (no errno)


def explain(exc: BaseException) -> str:
    """One or two lines: what went wrong (naming the field, file or module) and what to do about it."""
    exc = interruption(exc) or exc
    names = _names(exc)
    if _terminated(exc):
        return "terminated (SIGTERM); finished results are kept, rerun the same command to continue"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted; finished results are kept, rerun the same command to continue"
    if isinstance(exc, UnitsFailed):
        return str(exc)
    if "ValidationError" in names and hasattr(exc, "errors"):  # pydantic
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" + ("" if err["type"] == "value_error" else f" (got {err.get('input')!r})"))
        return f"invalid {getattr(exc, 'title', 'configuration')}: " + "; ".join(parts)
    if "ParameterTypeError" in names:  # Prefect's validation of a flow's (a deployment's) parameters
        lines = [ln.strip().removeprefix("- ").replace("Value error, ", "").replace(
            "Extra inputs are not permitted", "unknown field; check the spelling (docs/config.md)")
            for ln in str(exc).splitlines()[1:]]
        return "invalid flow parameters: " + "; ".join(ln for ln in lines if ln)
    if "SafetensorError" in names or "HeaderTooLarge" in str(exc) or "MetadataIncompleteBuffer" in str(exc):
        return f"a weights file is damaged or truncated ({_first_arg(exc)}); {_WEIGHTS_FIX}"
    if "NonFiniteActivationError" in names:
        return _first_arg(exc)
    if "OutOfMemoryError" in names or isinstance(exc, MemoryError):
        return ("out of memory; lower the batch size (--batch-size / scorer.batch_size) or max_length, "
                "or use a smaller model")
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); fix or regenerate the file"
    if "YAMLError" in names:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"not valid YAML{where} ({getattr(exc, 'problem', None) or exc}); fix the file"
    if isinstance(exc, OSError):
        return _os_error(exc) or _first_arg(exc)
    if "database or disk is full" in str(exc):  # SQLite (the MLflow store) hit a full disk
        return ("no space left on the device (the MLflow SQLite store); free space there, or write elsewhere "
                "(outputs.root / outputs.mlflow_uri), then rerun")
    if isinstance(exc, (ValueError, LookupError)) or "ChecksumError" in names:
        return _first_arg(exc)  # plop's own messages name the field and the fix
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"internal error: {type(exc).__name__}: {first}; {DEBUG_HINT}"


def exit_status(exc: BaseException) -> int:
    """2 for bad input and environment problems `explain` knows, 130 for Ctrl-C, 143 for SIGTERM, 1 for anything
    else."""
    exc = interruption(exc) or exc
    if _terminated(exc):
        return TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    if isinstance(exc, UnitsFailed):
        return INTERNAL
    return INTERNAL if explain(exc).startswith("internal error:") else USAGE
