"""Prefect runs that a dead driver left open: found by the driver tag, ended Crashed by the next sweep.

Why: a `plop sweep` driver killed with SIGKILL never reports its flow run's end, so the run (and the
task runs in flight) would show Running forever; a Ray worker killed mid-task leaves its task run
Running while Ray retries the task elsewhere. `run_sweep` tags every flow run with its driver
(`plop-driver=<host>/<pid>/<start ticks>`, see plop_core.driver); the next sweep marks the Running or
Pending flow runs of drivers that are gone (on this host) Crashed, with their open task runs; after a
flow run ends, its task runs still open (their worker died) are marked Crashed too.
"""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from plop_core import driver

TAG = "plop-driver="
OPEN = [StateType.RUNNING, StateType.PENDING]


def driver_tag() -> str:
    """This process as the driver of the flow runs it starts."""
    me = driver.identity()
    return f"{TAG}{me['host']}/{me['pid']}/{me['started']}"


def _gone(tags: list[str]) -> bool:
    for t in tags:
        if t.startswith(TAG):
            host, pid, started = (t.removeprefix(TAG).split("/") + ["", "", ""])[:3]
            return driver.is_gone(host, pid, started)
    return False


def _crash_open_task_runs(client, flow_run_id, why: str) -> list[str]:
    runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=OPEN))))
    for r in runs:
        client.set_task_run_state(r.id, Crashed(message=why), force=True)
    return [str(r.id) for r in runs]


def crash_stale_flow_runs() -> list[str]:
    """Mark Crashed the open flow runs (and their open task runs) whose driver process is gone."""
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=OPEN))), limit=200)
        for r in runs:
            if _gone(r.tags or []):
                why = "its driver process is gone (killed); marked Crashed by a later plop sweep"
                client.set_flow_run_state(r.id, Crashed(message=why), force=True)
                _crash_open_task_runs(client, r.id, why)
                crashed.append(str(r.id))
    return crashed


def crash_orphan_task_runs(flow_run_id) -> list[str]:
    """After a flow run ended: its task runs still open lost their worker (Ray retried the work)."""
    with get_client(sync_client=True) as client:
        return _crash_open_task_runs(client, flow_run_id, "its worker process died; Ray retried the work in "
                                                          "another task run")
