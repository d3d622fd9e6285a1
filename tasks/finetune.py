"""Prefect tasks for experiments: finetune + evaluate one (arm, seed), and evaluate the base model.

Both run on Ray worker processes (never threads: TRL/datasets are not thread-safe) with the sweep's
declared resources; a finished unit ends `Cached` (tasks/common.py). `log_prints=False`: datasets'
fingerprinting prints bytecode through a swapped stdout, which must not reach the logs.
"""

from __future__ import annotations

from prefect import task

from plop_core.units import BaseEval, FinetuneRun, work
from tasks.common import NOT_PERSISTED, cached_or


@task(**NOT_PERSISTED, name="finetune-arm", task_run_name="finetune {run.model.name}/{run.task_name} {run.arm} seed {run.seed}",
      retries=1, retry_delay_seconds=5, log_prints=False)
def train_arm(run: FinetuneRun):
    return cached_or(run, work.train_run)


@task(**NOT_PERSISTED, name="evaluate-base", task_run_name="evaluate base {unit.model.name} on {unit.task_name}", retries=1,
      retry_delay_seconds=5, log_prints=False)
def evaluate_base(unit: BaseEval):
    return cached_or(unit, work.evaluate_base)
