"""Prefect tasks that report: MLflow runs (through the library's `Tracker`) plus Prefect artifacts
(a table per cell and per experiment, a markdown summary per sweep).

They run inline in the flow's process (called, not submitted), so only one process writes the MLflow
store (SQLite by default) and Ray workers never need MLflow.
"""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from plop_core.units import Experiment, ExperimentResult, Layout, Outcome, report
from plop_core.units.track import Tracker
from tasks.common import NOT_PERSISTED


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


@task(**NOT_PERSISTED, name="report-cell", task_run_name="report {o.unit.model.name} on {o.unit.sample.task_name}")
def report_cell(tracker: Tracker, o: Outcome, layout: Layout) -> str:
    """The cell's nested MLflow run and a Prefect table of its per-type NFN. Returns the MLflow run id."""
    rec = o.result
    run_id = tracker.log_cell(rec, layout, o.cached)
    create_table_artifact(
        key=artifact_key("nfn", rec.model_name, rec.task_name), table=report.type_rows(rec),
        description=f"NFN per module type, {rec.model_name} on {rec.task_name}; placement "
                    f"({rec.placement['strategy']}): {', '.join(rec.placement['types'])}; MLflow run {run_id}; "
                    f"files: {rec.files['types']}")
    return run_id


@task(**NOT_PERSISTED, name="report-experiment", task_run_name="report arms {exp.model_name} on {exp.task_name}")
def report_experiment(tracker: Tracker, exp: Experiment, arms: list[Outcome], result: ExperimentResult,
                      cell_run_id: str) -> list[str]:
    """Nested MLflow runs per (arm, seed) and a Prefect table of the experiment's summary."""
    run_ids = tracker.log_experiment(exp, [a.result for a in arms], result, cell_run_id)
    create_table_artifact(key=artifact_key("arms", exp.model_name, exp.task_name), table=report.arm_rows(result),
                          description=f"{result.metric} by arm at matched budget, {exp.model_name} on {exp.task_name}; "
                                      f"chart: {result.files['chart']}")
    return run_ids


@task(**NOT_PERSISTED, name="report-sweep")
def report_sweep(name: str, markdown: str) -> None:
    create_markdown_artifact(key=artifact_key("sweep", name), markdown=markdown, description=f"plop sweep {name}")
