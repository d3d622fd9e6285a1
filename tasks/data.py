"""Prefect task: draw a task's sample once and write it as Parquet (returns a small record with its hash)."""

from __future__ import annotations

from prefect import task

from plop_core import pipeline


@task(name="sample", task_run_name="sample {task_name}", retries=1, retry_delay_seconds=5)
def sample(task_name: str, sampling: dict, root: str) -> dict:
    return pipeline.prepare_sample(task_name, sampling, root)


@task(name="model-identity", task_run_name="identify {spec[id]}", retries=1, retry_delay_seconds=5)
def model_identity(spec: dict) -> dict:
    """Resolve (fetching an offline asset on first use) and hash a model's weights, without loading it."""
    return pipeline.model_record(spec)
