"""Prefect tasks that report: MLflow runs (parent per sweep, nested per cell / per arm+seed), Prefect
artifacts (a table per cell, a markdown summary per sweep) and the sweep's manifest under the results root.

They run inline in the flow's process (called, not submitted), so only one process writes the MLflow
store (SQLite by default) and Ray workers never need MLflow.
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from plop_core import artifacts, tracking


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


@task(name="start-sweep-run")
def start_sweep_run(cfg: dict, uri: str, experiment_id: str, flow: str) -> str:
    """MLflow parent run of a sweep, with the whole config as params."""
    return tracking.start_run(uri, experiment_id, cfg["name"], params=tracking.flatten(cfg),
                              tags={"plop.level": "sweep", "plop.flow": flow, "plop.sweep": cfg["name"]})


@task(name="report-cell", task_run_name="report {rec[model_name]} on {rec[task_name]}")
def report_cell(rec: dict, uri: str, experiment_id: str, parent_run_id: str, cached: bool) -> str:
    """A nested MLflow run per scoring cell (params, per-type NFN metrics with intervals, tags, files)
    and a Prefect table artifact of its per-type NFN and placement. Returns the MLflow run id."""
    placement = rec["placement"]
    run_id = tracking.start_run(
        uri, experiment_id, f"{rec['model_name']} / {rec['task_name']}", parent_run_id=parent_run_id,
        params={"model_identity": rec["model_identity"], "model_id": rec["identity"].get("id"),
                "sample_hash": rec["sample_hash"], "config_hash": rec["config_hash"], "cell_key": rec["cell_key"],
                "code_version": rec["code_version"], "estimator": rec["estimator"],
                **{f"meta.{k}": v for k, v in rec.get("meta", {}).items()}},
        tags={"plop.level": "cell", "model": rec["model_name"], "task": rec["task_name"],
              "placement": ",".join(placement["types"]), "strategy": placement["strategy"],
              "plop.cached": str(cached).lower(), "plop.cell_key": rec["cell_key"]},
    )
    metrics = {}
    for t in rec["types"]:
        for col in ("nfn", "nfn_ci_low", "nfn_ci_high", "layer_min", "layer_max", "layer_std"):
            metrics[f"{col}.{t['type']}"] = t.get(col)
    if placement.get("stability") is not None:
        metrics["selection_stability"] = placement["stability"]
    metrics["score_seconds"] = rec.get("seconds")
    tracking.log_metrics(uri, run_id, metrics)
    files = rec["files"]
    for name in ("modules", "types", "parts", "placements"):
        if name in files:
            tracking.log_artifact(uri, run_id, files[name], f"parquet/{name}")
    for name in ("heatmap", "placement", "lora_config"):
        if name in files:
            tracking.log_artifact(uri, run_id, files[name])
    tracking.end_run(uri, run_id)
    rows = [{"type": t["type"], "nfn": round(t["nfn"], 4),
             "ci": f"[{t.get('nfn_ci_low', float('nan')):.3f}, {t.get('nfn_ci_high', float('nan')):.3f}]",
             "chosen": "yes" if t["type"] in placement["types"] else ""} for t in rec["types"]]
    create_table_artifact(
        key=artifact_key("nfn", rec["model_name"], rec["task_name"]), table=rows,
        description=f"NFN per module type, {rec['model_name']} on {rec['task_name']}; placement "
                    f"({placement['strategy']}): {', '.join(placement['types'])}; MLflow run {run_id}; "
                    f"files: {files['types']}",
    )
    return run_id


@task(name="report-experiment", task_run_name="report arms {rec[model_name]} on {rec[task_name]}")
def report_experiment(rec: dict, plan: dict, arm_recs: list[dict], result: dict, uri: str, experiment_id: str,
                      cell_run_id: str) -> list[str]:
    """A nested MLflow run per (arm, seed) under the cell's run (training curve, evaluation metrics with
    intervals), the comparison chart and tables on the cell's run, and a Prefect table of the summary."""
    run_ids = []
    metrics = [m for m in plan["runs"][0]["evaluation"]["metrics"]]
    for r in arm_recs:
        rid = tracking.start_run(
            uri, experiment_id, f"{r['arm']} seed {r['seed']}", parent_run_id=cell_run_id,
            params={"arm": r["arm"], "seed": r["seed"], "rank": r["rank"], "types": r.get("types"),
                    "trainable_params": r.get("trainable_params"), "target_params": r.get("target_params"),
                    "n_modules": r.get("n_modules"), "finetune": plan["runs"][0]["finetune"],
                    "run_key": next((x["run_key"] for x in plan["runs"]
                                     if x["arm"] == r["arm"] and x["seed"] == r["seed"]), "")},
            tags={"plop.level": "arm", "model": rec["model_name"], "task": rec["task_name"], "arm": r["arm"],
                  "placement": r.get("types", "")})
        vals = {k: r.get(k) for m in metrics for k in (m, f"{m}_low", f"{m}_high")}
        vals.update({k: r.get(k) for k in ("first_loss", "final_loss", "train_s", "tokens_per_s", "peak_mem_mb",
                                            "mean_reward", "eval_s")})
        tracking.log_metrics(uri, rid, vals)
        curve = r.get("losses") or [r.get("first_loss"), r.get("final_loss")]
        tracking.log_curve(uri, rid, "train.loss", [(i, v) for i, v in enumerate(curve) if v is not None])
        tracking.log_json(uri, rid, {k: v for k, v in r.items() if k != "per_row"}, "run.json")
        tracking.end_run(uri, rid)
        run_ids.append(rid)
    for name in ("chart", "summary", "evaluation", "training"):
        if name in result["files"]:
            tracking.log_artifact(uri, cell_run_id, result["files"][name], "experiment")
    m = result["metric"]
    rows = [{"arm": s["arm"], "types": s.get("types") or "-", "rank": s.get("rank"),
             "params": s.get("trainable_params"), m: round(s[m], 4),
             "interval": f"[{s[m + '_low']:.3f}, {s[m + '_high']:.3f}]"} for s in result["summary"]]
    create_table_artifact(key=artifact_key("arms", rec["model_name"], rec["task_name"]), table=rows,
                          description=f"{m} by arm at matched budget, {rec['model_name']} on {rec['task_name']}; "
                                      f"chart: {result['files']['chart']}")
    return run_ids


@task(name="report-sweep")
def report_sweep(cfg: dict, summary_markdown: str, manifest: dict, uri: str, parent_run_id: str,
                 chart: str | None = None) -> str:
    """Markdown summary artifact + manifest.json/summary.md under <root>/sweeps/<name>/; ends the parent run."""
    root = Path(manifest["root"])
    out = root / "sweeps" / artifacts.safe_label(cfg["name"])
    artifacts.atomic_write_json(out / "manifest.json", manifest)
    md_path = artifacts.atomic_write_text(out / "summary.md", summary_markdown)
    tracking.log_artifact(uri, parent_run_id, md_path)
    if chart:
        tracking.log_artifact(uri, parent_run_id, chart)
    tracking.end_run(uri, parent_run_id, "FINISHED" if not manifest.get("failed") else "FAILED")
    create_markdown_artifact(key=artifact_key("sweep", cfg["name"]), markdown=summary_markdown,
                             description=f"plop sweep {cfg['name']}")
    return str(out)
