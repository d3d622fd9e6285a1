"""Prefect tasks for scoring: one task run per (model, task) cell, grouped per model on one Ray worker.

`score_model` runs on Ray with the sweep's declared resources and calls `score_cell` once per task of
that model as nested task runs, so every cell has its own state, retries and cache entry in the UI while
the model is loaded once (plop_core.pipeline's per-process cache). A cell's cache key is its
`cell_key` (model identity, sample hash, configs, code version); the flow sets `refresh_cache` for a
cell whose files are missing under the results root, so deleting a cell's files recomputes it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.filesystems import LocalFileSystem

from plop_core import pipeline


def cell_cache_key(context, parameters) -> str:
    return "plop-score-" + parameters["cell"]["cell_key"]


def result_storage(root: str | Path) -> str:
    """Prefect result records of cached tasks live with the results, in `<root>/.prefect-results`.

    Saved as a LocalFileSystem block on the server (tasks on Ray workers need a server-side reference);
    returns the block's slug. Call it from the flow before submitting cells.
    """
    import hashlib

    base = str(Path(root).resolve() / ".prefect-results")
    name = "plop-results-" + hashlib.sha256(base.encode()).hexdigest()[:12]
    LocalFileSystem(basepath=base).save(name, overwrite=True)
    return f"local-file-system/{name}"


@task(name="score-cell", task_run_name="score {cell[model_name]} on {cell[task_name]}",
      cache_key_fn=cell_cache_key, persist_result=True, retries=1, retry_delay_seconds=5)
def score_cell(cell: dict) -> dict:
    return pipeline.score_cell(cell)


@task(name="score-model", task_run_name="model {model_name}: {n_tasks} tasks")
def score_model(model_name: str, n_tasks: int, cells: list[dict], refresh: list[bool], storage: str) -> list[dict]:
    """Score all cells of one model in this worker; a failed cell is reported, the others still run."""
    out = []
    for cell, fresh in zip(cells, refresh):
        run = score_cell.with_options(refresh_cache=fresh, result_storage=storage)
        state = run(cell, return_state=True)
        if state.is_completed():
            rec = state.result()
            out.append({"ok": True, "cached": state.name == "Cached", "record": rec})
        else:
            out.append({"ok": False, "cell_key": cell["cell_key"], "model_name": cell["model_name"],
                        "task_name": cell["task_name"], "error": str(state.message)})
    return out
