"""Model hosts: Ray actors that load a model once and score many units (shards and cells) with it.

Why actors: a Ray task lands in whatever worker process is free, so keeping a model loaded across tasks
relied on a per-process cache and forced every cell of one model into one task (one worker). A
`ModelHost` is a Ray actor (its own process, with the sweep's per-cell resources: CPUs, fractional
GPUs, memory) that owns a `plop_core.units.work.ModelCache`: the model stays loaded across the shards
and cells that host scores. `HostPool` starts as many hosts as the cluster fits (at most one per unit to
run, spread over the nodes) and lends a free host to each Prefect task, preferring one that already holds
the unit's model. Ray schedules the hosts onto nodes and restarts one whose process died
(`max_restarts`); the Prefect task that saw it die fails and is retried on a host.

The Prefect task runs in a thread of the flow's process (a `ThreadPoolTaskRunner` with one thread per
host) and waits on its host's call, so every shard and cell is a task run in the UI with its own state
and retries, while the work runs on the host. Units cross to the host as JSON records and come back as
JSON result records (never pickles of models or tensors).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time

import ray

from plop_core.units.records import CellResult, ScoringCell, ScoringShard, ShardResult

UNIT_TYPES = {"cell": (ScoringCell, CellResult), "shard": (ScoringShard, ShardResult)}
_KEPT: dict[tuple, HostPool] = {}  # hosts left running by a scoring-only sweep, by (Ray job, resources, size)


def release_kept() -> None:
    """Kill the hosts a previous sweep of this process left running (frees their resources)."""
    while _KEPT:
        _KEPT.popitem()[1].kill()


def _ray_session() -> tuple[str, str]:
    """This Ray session: the job id alone repeats (the first driver of every new cluster is job 01000000),
    the driver's node id is new with every cluster."""
    ctx = ray.get_runtime_context()
    return ctx.get_job_id(), ctx.get_node_id()


@ray.remote
class ModelHost:
    """One worker process holding models: `run` scores a unit with the model it already holds (or loads it)."""

    def __init__(self):
        from plop_core.units.work import ModelCache

        self.models = ModelCache()

    def where(self) -> dict:
        import os
        import socket

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "host": socket.gethostname()}

    def run(self, kind: str, unit_json: str, ids: dict) -> str:
        """Score one unit (`kind` "shard" or "cell"), declaring the Prefect ids and this node for provenance."""
        from plop_core.runtime_info import running_in
        from plop_core.units import work

        unit_cls, _ = UNIT_TYPES[kind]
        unit = unit_cls.model_validate_json(unit_json)
        fn = work.score_shard if kind == "shard" else work.score_cell
        with running_in(**{**ids, "ray_node_id": ray.get_runtime_context().get_node_id()}):
            return fn(unit, models=self.models).model_dump_json()


def host_slots(resources: dict) -> int:
    """How many hosts with these resources the cluster holds at once (CPUs, GPUs and memory all counted)."""
    total = ray.cluster_resources()
    fits = [total.get("CPU", 0) / resources["num_cpus"]] if resources.get("num_cpus") else []
    if resources.get("num_gpus"):
        fits.append(total.get("GPU", 0) / resources["num_gpus"])
    if resources.get("memory"):
        fits.append(total.get("memory", 0) / resources["memory"])
    n = math.floor(min(fits) + 1e-9) if fits else 1
    if n < 1:
        raise RuntimeError(f"the Ray cluster ({ {k: total.get(k) for k in ('CPU', 'GPU', 'memory')} }) cannot hold "
                           f"one scoring host with {resources}; lower resources.cpus_per_cell / gpus_per_cell / "
                           "memory_gb_per_cell or add nodes")
    return n


class HostPool:
    """`size` ModelHost actors; `run(unit)` borrows a free one (one holding the unit's model first)."""

    def __init__(self, size: int, resources: dict):
        opts = {"num_cpus": resources.get("num_cpus", 1), "num_gpus": resources.get("num_gpus", 0),
                "max_restarts": 2, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        if resources.get("memory"):
            opts["memory"] = resources["memory"]
        self.hosts = [ModelHost.options(**opts).remote() for _ in range(size)]
        self.holds: list[str | None] = [None] * size     # identity key of the model each host last loaded
        self.last_used = [0.0] * size
        self.free = set(range(size))
        self.pending: dict[str, int] = {}  # model identity key -> units announced (`expect`) and not yet started
        self.lock = threading.Condition()

    def expect(self, units) -> None:
        """Announce the units about to run (lets a host keep its model while more units of it are coming)."""
        with self.lock:
            for u in units:
                self.pending[u.model.identity_key] = self.pending.get(u.model.identity_key, 0) + 1

    @classmethod
    @contextlib.contextmanager
    def start(cls, n_units: int, resources: dict, keep: bool = False):
        """As many hosts as the cluster fits and there are units. `keep`: leave them running (models loaded)
        for the next sweep in this process and Ray session, which reuses them when its resources are the
        same; otherwise they are killed on exit, freeing their CPUs/GPUs for the finetuning tasks."""
        size = max(1, min(n_units, host_slots(resources)))
        spec = (_ray_session(), tuple(sorted(resources.items())), size)
        pool = _KEPT.pop(spec, None)
        release_kept()  # hosts of another shape hold resources this sweep's hosts or tasks need
        if pool is not None and not pool.alive():
            pool.kill()  # what is left of it holds resources the new pool needs
            pool = None
        if pool is None:
            pool = cls(size, resources)
        pool.pending.clear()
        try:
            yield pool
        finally:
            if keep:
                _KEPT[spec] = pool
            else:
                pool.kill()

    def alive(self, timeout_s: float = 10.0) -> bool:
        """Every host answers (a kept pool whose Ray session ended, or whose host died for good, is not)."""
        try:
            ray.get([h.where.remote() for h in self.hosts], timeout=timeout_s)
        except Exception:  # noqa: BLE001  (RayActorError, GetTimeoutError, a dead session's errors)
            return False
        return True

    def kill(self) -> None:
        for h in self.hosts:
            try:
                ray.kill(h)
            except Exception:  # noqa: BLE001  (already gone, e.g. with the Ray session that started it)
                pass

    def _choose(self, key: str) -> int | None:
        """Which free host takes a unit of model `key`, or None to wait for the busy host that holds it:
        a free host holding the model; else an empty one or one whose model has no units left, unless a
        busy host holds this model while another model waits for a host; else, when no host holds it,
        the least recently used free host (it loads the model)."""
        free = sorted(self.free, key=lambda j: self.last_used[j])
        holding = [i for i in free if self.holds[i] == key]
        if holding:
            return holding[0]
        held = set(self.holds)
        busy_holder = key in held
        orphans = any(n > 0 and k != key and k not in held for k, n in self.pending.items())
        spare = [i for i in free if self.holds[i] is None or not self.pending.get(self.holds[i])]
        if spare and not (busy_holder and orphans):
            return spare[0]
        if not busy_holder and free:
            return free[0]
        return None

    def _borrow(self, key: str) -> int:
        with self.lock:
            while (i := self._choose(key)) is None:
                self.lock.wait()
            self.free.discard(i)
            self.holds[i] = key
            if self.pending.get(key):
                self.pending[key] -= 1
            return i

    def _give_back(self, i: int, model_key: str | None) -> None:
        with self.lock:
            self.holds[i], self.last_used[i] = model_key, time.monotonic()
            self.free.add(i)
            self.lock.notify_all()

    def run(self, unit: ScoringCell | ScoringShard, ids: dict) -> CellResult | ShardResult:
        """Score `unit` on a host and return its result record (raises what the host raised)."""
        key = unit.model.identity_key
        i = self._borrow(key)
        try:
            out = ray.get(self.hosts[i].run.remote(unit.kind, unit.model_dump_json(), ids))
        except ray.exceptions.RayActorError:
            self._give_back(i, None)  # Ray restarts the host's process (max_restarts): it holds nothing now
            raise
        except BaseException:
            self._give_back(i, key)
            raise
        self._give_back(i, key)
        return UNIT_TYPES[unit.kind][1].model_validate_json(out)


def run_order(units: list) -> list[list]:
    """Units taken round-robin across models (one of each model, then the next of each): with as many
    hosts as models each host keeps one model; with more hosts, one model's units spread over them.
    Each model's units go longest first (`cost`): the short ones fill in at the end, so hosts finish
    together (4 tasks of 1.6-5.2 s on 2 hosts: 9.9 s in plan order, 9.0 s longest first)."""
    by_model: dict[str, list] = {}
    for u in sorted(units, key=lambda u: -u.cost):  # stable: plan order among equal costs
        by_model.setdefault(u.model.identity_key, []).append(u)
    rounds = max((len(v) for v in by_model.values()), default=0)
    return [[v[i] for v in by_model.values() if i < len(v)] for i in range(rounds)]
