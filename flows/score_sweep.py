"""The scoring sweep: models x tasks -> NFN scores and placements, one Prefect task run per cell on Ray.

Read top to bottom: resolve models and samples (small records), plan the cells (cache keys), score
them on Ray grouped by model (each model loaded once per worker), then report every cell to MLflow
and Prefect and write the sweep's summary. `run_sweep` (used by `plop sweep`) sets up the Prefect API
and Ray around the flow; a deployment calls the flow directly against its server.
"""

from __future__ import annotations

import itertools

from prefect import flow
from prefect.runtime import flow_run
from prefect_ray.context import remote_options

from flows.runtime import ray_task_runner
from plop_core import pipeline, tracking
from plop_core.config import SweepConfig, load_sweep_config
from tasks import data, report, scoring


def ray_resources(cfg: SweepConfig) -> dict:
    r = cfg.resources
    opts = {"num_cpus": r.cpus_per_cell, "num_gpus": r.gpus_per_cell}
    if r.memory_gb_per_cell:
        opts["memory"] = int(r.memory_gb_per_cell * 2**30)
    return opts


def score_cells(cfg: SweepConfig) -> list[dict]:
    """Samples and model identities (inline), then every (model, task) cell on Ray; returns outcomes."""
    root = str(pipeline.results_root(cfg))
    models = [data.model_identity(m.model_dump(mode="json")) for m in cfg.models]
    sampling = cfg.sampling.model_dump(mode="json")
    samples = {t: data.sample(t, sampling, root) for t in cfg.tasks}
    cells = pipeline.plan_scoring_cells(cfg, models, samples)
    storage = scoring.result_storage(root)
    futures = []
    with remote_options(**ray_resources(cfg)):
        for name, group in itertools.groupby(cells, key=lambda c: c["model_name"]):
            group = list(group)
            refresh = [not pipeline.cell_done(c) for c in group]
            futures.append(scoring.score_model.submit(name, len(group), group, refresh, storage))
    return [outcome for f in futures for outcome in f.result()]


def summary_markdown(cfg: SweepConfig, outcomes: list[dict], run_ids: dict[str, str], uri: str) -> str:
    records = [o["record"] for o in outcomes if o["ok"]]
    lines = [f"# plop sweep `{cfg.name}`", "", f"Results root: `{pipeline.results_root(cfg)}`  ",
             f"MLflow: `{uri}` (experiment `{cfg.outputs.experiment}`); UI: `{tracking.ui_command(uri)}`", ""]
    if records:
        table = pipeline.scoring_summary(records)
        lines += ["## NFN per module type (lowest = where LoRA goes)", "", pipeline.markdown_table(table), ""]
        lines += ["## Cells", "", "| model | task | cached | MLflow run | Parquet (types) |", "|---|---|---|---|---|"]
        for o in outcomes:
            if o["ok"]:
                r = o["record"]
                lines.append(f"| {r['model_name']} | {r['task_name']} | {o['cached']} | "
                             f"{run_ids.get(r['cell_key'], '')} | `{r['files']['types']}` |")
    failed = [o for o in outcomes if not o["ok"]]
    if failed:
        lines += ["", "## Failed cells", ""] + [f"- {o['model_name']} / {o['task_name']}: {o['error']}" for o in failed]
    return "\n".join(lines) + "\n"


def report_scoring(cfg: SweepConfig, outcomes: list[dict], uri: str, exp_id: str, parent: str) -> dict[str, str]:
    run_ids = {}
    for o in outcomes:
        if o["ok"]:
            rec = o["record"]
            run_ids[rec["cell_key"]] = report.report_cell(rec, uri, exp_id, parent, o["cached"])
    return run_ids


def manifest(cfg: SweepConfig, outcomes: list[dict], run_ids: dict[str, str], uri: str, **extra) -> dict:
    return {"sweep": cfg.name, "root": str(pipeline.results_root(cfg)), "mlflow_uri": uri,
            "experiment": cfg.outputs.experiment, "config": cfg.model_dump(mode="json"),
            "cells": [{**({k: o["record"][k] for k in ("cell_key", "model_name", "task_name", "files")}
                          if o["ok"] else o), "ok": o["ok"], "cached": o.get("cached"),
                       "mlflow_run_id": run_ids.get(o.get("record", {}).get("cell_key"))} for o in outcomes],
            "model_loads": sum(1 for o in outcomes if o["ok"] and o["record"]["model_loaded"] and not o["cached"]),
            "failed": [o for o in outcomes if not o["ok"]], **extra}


@flow(name="plop-score-sweep", flow_run_name="score-sweep-{config[name]}", log_prints=True,
      task_runner=ray_task_runner())
def score_sweep(config: dict) -> dict:
    """Score every (model, task) cell of a sweep config (a SweepConfig as a dict)."""
    cfg = load_sweep_config(config)
    uri = tracking.resolve_tracking_uri(cfg.outputs.mlflow_uri, pipeline.results_root(cfg))
    exp_id = tracking.ensure_experiment(uri, cfg.outputs.experiment, pipeline.results_root(cfg))
    parent = report.start_sweep_run(cfg.model_dump(mode="json"), uri, exp_id, "score_sweep")
    outcomes = score_cells(cfg)
    run_ids = report_scoring(cfg, outcomes, uri, exp_id, parent)
    man = manifest(cfg, outcomes, run_ids, uri, mlflow_parent_run_id=parent, flow_run_id=str(flow_run.id))
    md = summary_markdown(cfg, outcomes, run_ids, uri)
    man["summary_dir"] = report.report_sweep(cfg.model_dump(mode="json"), md, man, uri, parent)
    print(md)
    if man["failed"]:
        raise RuntimeError(f"{len(man['failed'])} cell(s) failed: " +
                           "; ".join(f"{o['model_name']}/{o['task_name']}: {o['error']}" for o in man["failed"]))
    return man
