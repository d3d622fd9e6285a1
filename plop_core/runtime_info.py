"""Where and with what a result was computed: host, process, Ray node, Prefect run ids, library versions.

Why: on a shared cluster a surprising number must be traceable to the node, worker, flow run and library
versions that produced it. The library cannot ask Prefect or Ray itself (it imports neither), so the
orchestrator's task wrapper declares its ids with `running_in(...)` around the work (tasks/common.py),
and every writer stamps `runtime()` into its rows (Parquet provenance columns) and records (MLflow tags).
A serial run records host, pid and versions, and leaves the orchestrator ids empty.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "transformers", "peft", "trl", "prefect", "ray", "plop")
ORCHESTRATOR_IDS = ("ray_node_id", "flow_run_id", "task_run_id")

_IDS: ContextVar[dict[str, str]] = ContextVar("plop_orchestrator_ids", default={})  # noqa: B039 (never mutated)


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """Installed versions of the stack (read from package metadata: nothing is imported)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


@contextlib.contextmanager
def running_in(**ids: str | None) -> Iterator[None]:
    """Declare the orchestrator's ids (ray_node_id, flow_run_id, task_run_id) for the work inside."""
    unknown = set(ids) - set(ORCHESTRATOR_IDS)
    if unknown:
        raise ValueError(f"unknown runtime ids {sorted(unknown)}; use {', '.join(ORCHESTRATOR_IDS)}")
    token = _IDS.set({**_IDS.get(), **{k: str(v) for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _IDS.reset(token)


def runtime() -> dict[str, str | int | None]:
    """This process's provenance: hostname, worker pid, the declared orchestrator ids, versions (JSON)."""
    ids = _IDS.get()
    return {"hostname": socket.gethostname(), "worker_pid": os.getpid(),
            **{k: ids.get(k) for k in ORCHESTRATOR_IDS}, "versions": json.dumps(versions(), sort_keys=True)}
