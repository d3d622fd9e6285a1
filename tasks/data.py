"""Prefect tasks that prepare a sweep: resolve each model (fetch an offline asset, hash its weights,
no load) and draw each task's scoring sample once (Parquet under the results root)."""

from __future__ import annotations

from prefect import task

from plop_core.config import ModelSpec, SamplingConfig
from plop_core.runtime_info import running_in
from plop_core.units import Layout, ModelRef, SampleRef, plan
from tasks.common import NOT_PERSISTED, orchestrator_ids


@task(**NOT_PERSISTED, name="model-identity", task_run_name="identify {spec.id}", retries=1, retry_delay_seconds=5)
def resolve_model(spec: ModelSpec) -> ModelRef:
    return plan.resolve_model(spec)


@task(**NOT_PERSISTED, name="sample", task_run_name="sample {task_name}", retries=1, retry_delay_seconds=5)
def draw_sample(task_name: str, sampling: SamplingConfig, layout: Layout) -> SampleRef:
    with running_in(**orchestrator_ids()):  # the sample's Parquet rows record where they were drawn
        return plan.draw_sample(task_name, sampling, layout)
