"""Prefect tasks for scoring: one task run per shard and per (model, task) cell.

On Ray (`score_on_hosts`): the units run on `tasks.hosts.ModelHost` actors that keep their model loaded;
each unit's Prefect task runs in a thread of the flow's process and waits on its host, so every shard and
cell has its own state and retries in the UI while the hosts share the work (one model on many tasks, or
one big cell's shards, spread over every host). A sharded cell is merged once all its shards are scored.
Without Ray (Prefect's process pool, `resources.use_ray: false`): `score_model` runs one model's cells,
shards first, in one pool process with the library's per-process model cache.
A finished unit ends `Cached` (tasks/common.py).
"""

from __future__ import annotations

from prefect import task

from plop_core.runtime_info import running_in
from plop_core.units import Outcome, ScoringCell, ScoringShard, work
from plop_core.units.runner import after_shards, shards_to_run
from tasks.common import NOT_PERSISTED, cached_or, orchestrator_ids, outcome


def _on(hosts, fn):
    """The unit's work: on a host of the pool (it declares its own node), or `fn` in this process."""
    return (lambda unit: hosts.run(unit, orchestrator_ids())) if hosts else fn


@task(**NOT_PERSISTED, name="score-cell", task_run_name="score {cell.model.name} on {cell.sample.task_name}", retries=1,
      retry_delay_seconds=5)
def score_cell(cell: ScoringCell, hosts=None, fresh: bool = False):
    """Score a cell (a sharded cell: merge its scored shards) on a host, or in this process without hosts."""
    if fresh:  # its shards were just scored: merge now, whatever an older record says
        with running_in(**orchestrator_ids()):
            return _on(hosts, work.score_cell)(cell)
    return cached_or(cell, _on(hosts, work.score_cell))


@task(**NOT_PERSISTED, name="score-shard",
      task_run_name="score {shard.cell.model.name} on {shard.cell.sample.task_name} shard {shard.index}/{shard.n_shards}",
      retries=1, retry_delay_seconds=5)
def score_shard(shard: ScoringShard, hosts=None):
    return cached_or(shard, _on(hosts, work.score_shard))


def score_on_hosts(cells: list[ScoringCell], resources: dict, keep: bool = False) -> tuple[list[Outcome], list[Outcome]]:
    """Every cell (and shard) on model-holding Ray actors; returns (cell outcomes, shard outcomes).
    `keep`: leave the hosts running for the next sweep of this process (a scoring-only sweep)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from tasks.hosts import HostPool, run_order

    shards = {c.key: shards_to_run(c) for c in cells}
    whole = [c for c in cells if not shards[c.key]]
    n_units = sum(len(s) for s in shards.values()) + len(whole)
    with HostPool.start(n_units, resources, keep) as pool, ThreadPoolTaskRunner(max_workers=len(pool.hosts)) as runner:
        first = [u for us in run_order([*(s for ss in shards.values() for s in ss), *whole]) for u in us]
        pool.expect(first + [c for c in cells if shards[c.key]])  # the merges run on a host of their model too
        futures = {u.key: runner.submit(score_shard, {"shard": u, "hosts": pool}) if u.kind == "shard" else
                   runner.submit(score_cell, {"cell": u, "hosts": pool}) for u in first}
        shard_fs = {k: [futures[s.key] for s in ss] for k, ss in shards.items()}
        cell_fs = {c.key: futures[c.key] for c in whole}
        shard_outcomes, merges = [], {}
        for c in cells:  # a sharded cell is merged as soon as its shards are in
            if shards[c.key]:
                done = [outcome(s, f) for s, f in zip(shards[c.key], shard_fs[c.key])]
                shard_outcomes += done
                failed = after_shards(c, done)
                merges[c.key] = failed or runner.submit(score_cell, {"cell": c, "hosts": pool, "fresh": True})
        outcomes = [outcome(c, cell_fs[c.key]) if c.key in cell_fs else
                    merges[c.key] if isinstance(merges[c.key], Outcome) else outcome(c, merges[c.key]) for c in cells]
    return outcomes, shard_outcomes


@task(**NOT_PERSISTED, name="score-model", task_run_name="model {model_name}: {n_tasks} tasks")
def score_model(model_name: str, n_tasks: int, cells: list[ScoringCell]) -> list[Outcome]:
    """Score all cells of one model in this worker (a sharded cell: its shards one after another, then the
    merge); a failed cell is reported, the others still run. Returns cell outcomes, then shard outcomes."""
    cell_outcomes, shard_outcomes = [], []
    for cell in cells:
        done = [outcome(s, score_shard(s, return_state=True)) for s in shards_to_run(cell)]
        shard_outcomes += done
        cell_outcomes.append(after_shards(cell, done) or
                             outcome(cell, score_cell(cell, fresh=bool(done), return_state=True)))
    return cell_outcomes + shard_outcomes

