"""Prefect tasks for the benchmark sweep: finetune + evaluate one (arm, seed), and evaluate the base model.

Both run on Ray worker processes (never threads: TRL/datasets are not thread-safe) with the sweep's
declared resources. Each is cached by its run key (cell key, arm, seed, finetune and evaluation
configs, code version); the flow forces a rerun when the run's JSON record is missing (resume).
"""

from __future__ import annotations

from prefect import task

from plop_core import pipeline


def run_cache_key(context, parameters) -> str:
    return "plop-finetune-" + parameters["run"]["run_key"]


def base_cache_key(context, parameters) -> str:
    return "plop-base-" + parameters["plan"]["base_key"]


@task(name="finetune-arm", task_run_name="finetune {run[model_name]}/{run[task_name]} {run[arm]} seed {run[seed]}",
      cache_key_fn=run_cache_key, persist_result=True, retries=1, retry_delay_seconds=5,
      log_prints=False)  # datasets' fingerprinting prints bytecode through a swapped stdout: keep it out of logs
def finetune_arm(run: dict) -> dict:
    return pipeline.finetune_run(run)


@task(name="evaluate-base", task_run_name="evaluate base {model_name} on {plan[task]}",
      cache_key_fn=base_cache_key, persist_result=True, retries=1, retry_delay_seconds=5, log_prints=False)
def evaluate_base(plan: dict, model_name: str, model_spec: dict, model_key: str) -> dict:
    return pipeline.evaluate_base_model(plan, model_spec, model_key)
