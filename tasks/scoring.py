"""Prefect tasks for scoring: one task run per (model, task) cell, the cells of one model in one Ray worker.

`score_model` runs on Ray with the sweep's declared resources and calls `score_cell` once per task of
that model as nested task runs, so every cell has its own state and retries in the UI while the model
is loaded once (the library's per-process model cache). A finished cell ends `Cached` (tasks/common.py).
"""

from __future__ import annotations

from prefect import task

from plop_core.units import Outcome, ScoringCell, work
from tasks.common import NOT_PERSISTED, cached_or, outcome


@task(**NOT_PERSISTED, name="score-cell", task_run_name="score {cell.model.name} on {cell.sample.task_name}", retries=1,
      retry_delay_seconds=5)
def score_cell(cell: ScoringCell):
    return cached_or(cell, work.score_cell)


@task(**NOT_PERSISTED, name="score-model", task_run_name="model {model_name}: {n_tasks} tasks")
def score_model(model_name: str, n_tasks: int, cells: list[ScoringCell]) -> list[Outcome]:
    """Score all cells of one model in this worker; a failed cell is reported, the others still run."""
    return [outcome(cell, score_cell(cell, return_state=True)) for cell in cells]
