"""Per-cell subflow of the benchmark sweep: one scored (model, task) cell -> finetune every (arm, seed)
at a matched budget on Ray -> evaluate (arms and the base model) -> report (Parquet, MLflow, chart)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run
from prefect_ray.context import remote_options

from flows.runtime import ray_task_runner
from plop_core import pipeline
from plop_core.config import load_sweep_config
from tasks import finetune, report


@flow(name="plop-benchmark-cell", flow_run_name="cell-{rec[model_name]}-{rec[task_name]}",
      task_runner=ray_task_runner(), log_prints=True)
def benchmark_cell(rec: dict, task: str, model: dict, config: dict, uri: str, experiment_id: str,
                   cell_run_id: str, storage: str, resources: dict) -> dict:
    cfg = load_sweep_config(config)
    plan = pipeline.plan_finetune(rec, task, cfg)
    with remote_options(**resources):
        base = finetune.evaluate_base.with_options(
            refresh_cache=not Path(plan["dir"], "base.done").exists(), result_storage=storage
        ).submit(plan, rec["model_name"], model["spec"], model["identity_key"])
        arms = [finetune.finetune_arm.with_options(refresh_cache=not pipeline.run_done(run), result_storage=storage)
                .submit(run) for run in plan["runs"]]
    base_rec = base.result()
    Path(plan["dir"], "base.done").touch()
    arm_recs = [f.result() for f in arms]
    result = pipeline.finish_experiment(rec, plan, arm_recs, base_rec, cfg, cfg.name)
    result["flow_run_id"] = str(flow_run.id)
    report.report_experiment(rec, plan, arm_recs, result, uri, experiment_id, cell_run_id)
    return result
