"""The done-rule as Prefect sees it, and a unit's outcome from a task's final state.

Prefect's own result cache is not used: its records are pickles, and unpickling a file from a shared
results root runs whatever code was planted there. The library's done-rule (`load_done`: the unit's
JSON record and the Parquet/JSON files it lists) decides instead, and a finished unit's task run ends in
a `Completed` state named `Cached`, so the UI shows exactly what the serial runner would reuse.
"""

from __future__ import annotations

from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from plop_core.runtime_info import running_in
from plop_core.units import Outcome, load_done

# every plop task: no Prefect cache lookup and no persisted result (a pickle) anywhere, whatever the settings
NOT_PERSISTED = {"cache_policy": NO_CACHE, "persist_result": False}


def cached_or(unit, work, **kw):
    """The unit's record as a `Cached` state when it is done, else the result of doing the work."""
    done = load_done(unit)
    if done is not None:
        return Completed(name="Cached", data=done, message="done: record and its files present")
    with running_in(**orchestrator_ids()):  # stamped into the unit's Parquet rows and records
        return work(unit, **kw)


def orchestrator_ids() -> dict[str, str | None]:
    """This task run's Prefect flow-run and task-run ids and, on a Ray worker, its Ray node id."""
    from prefect.runtime import flow_run, task_run

    ids = {"flow_run_id": flow_run.id, "task_run_id": task_run.id, "ray_node_id": None}
    import ray

    if ray.is_initialized():
        ids["ray_node_id"] = ray.get_runtime_context().get_node_id()
    return ids


def outcome(unit, state) -> Outcome:
    """An `Outcome` from a task run's final state, or from a future once it settles (a failed unit is
    reported, not raised)."""
    if hasattr(state, "wait"):  # a PrefectFuture
        state.wait()
        state = state.state
    if state.is_completed():
        return Outcome(unit=unit, result=state.result(), cached=state.name == "Cached")
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, BaseException):  # the unit's own error, not Ray's wrapper of it (RayTaskError.cause)
        from plop_core.errors import explain

        return Outcome(unit=unit, error=explain(getattr(exc, "cause", None) or exc))
    return Outcome(unit=unit, error=str(state.message))
