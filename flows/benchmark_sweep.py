"""The benchmark sweep: the scoring sweep, then for each scored cell of a finetune task a subflow that
finetunes every (arm, seed) at a matched budget on Ray, evaluates arms and the base model, and reports."""

from __future__ import annotations

from prefect import flow
from prefect.context import FlowRunContext
from prefect.runtime import flow_run

from flows.cell import benchmark_cell
from flows.runtime import ray_task_runner
from flows.score_sweep import manifest, ray_resources, report_scoring, score_cells, summary_markdown
from plop_core import pipeline, tracking
from plop_core.config import load_sweep_config
from tasks import report, scoring


def experiments_markdown(results: list[dict]) -> str:
    import pandas as pd

    lines = []
    for r in results:
        m = r["metric"]
        df = pd.DataFrame([{"arm": s["arm"], "types": s.get("types") or "-", "rank": s.get("rank"),
                            "params": s.get("trainable_params"), m: f"{s[m]:.4f}",
                            "interval": f"[{s[m + '_low']:.3f}, {s[m + '_high']:.3f}]"} for s in r["summary"]])
        lines += [f"## Finetuning: {r['model_name']} on {r['task_name']} ({m}, matched budget)", "",
                  pipeline.markdown_table(df), "", f"Chart: `{r['files']['chart']}`  ",
                  f"Parquet: `{r['files']['evaluation']}`", ""]
    return "\n".join(lines)


@flow(name="plop-benchmark-sweep", flow_run_name="benchmark-sweep-{config[name]}", log_prints=True,
      task_runner=ray_task_runner())
def benchmark_sweep(config: dict) -> dict:
    """Score every (model, task) cell, then finetune and evaluate arms per cell of the finetune tasks."""
    cfg = load_sweep_config(config)
    root = pipeline.results_root(cfg)
    uri = tracking.resolve_tracking_uri(cfg.outputs.mlflow_uri, root)
    exp_id = tracking.ensure_experiment(uri, cfg.outputs.experiment, root)
    parent = report.start_sweep_run(cfg.model_dump(mode="json"), uri, exp_id, "benchmark_sweep")
    outcomes = score_cells(cfg)
    run_ids = report_scoring(cfg, outcomes, uri, exp_id, parent)
    storage = scoring.result_storage(root)
    models = {m["model_name"]: m for m in (o["record"] for o in outcomes if o["ok"])}
    wanted = set(cfg.finetune_tasks or cfg.tasks)
    results = []
    for o in outcomes:
        if not o["ok"]:
            continue
        rec = o["record"]
        task = next(t for t in cfg.tasks if pipeline.task_label(t) == rec["task_name"])
        if task not in wanted:
            continue
        model = {"spec": next(m.model_dump(mode="json") for m in cfg.models
                              if pipeline.artifacts.safe_label(m.label) == rec["model_name"]),
                 "identity_key": models[rec["model_name"]]["model_identity"]}
        cell_flow = benchmark_cell.with_options(task_runner=FlowRunContext.get().task_runner.duplicate())
        results.append(cell_flow(rec, task, model, cfg.model_dump(mode="json"), uri, exp_id,
                                 run_ids[rec["cell_key"]], storage, ray_resources(cfg)))
    man = manifest(cfg, outcomes, run_ids, uri, mlflow_parent_run_id=parent, flow_run_id=str(flow_run.id),
                   experiments=results)
    md = summary_markdown(cfg, outcomes, run_ids, uri) + "\n" + experiments_markdown(results)
    charts = [r["files"]["chart"] for r in results]
    man["summary_dir"] = report.report_sweep(cfg.model_dump(mode="json"), md, man, uri, parent,
                                             chart=charts[0] if charts else None)
    print(md)
    if man["failed"]:
        raise RuntimeError(f"{len(man['failed'])} cell(s) failed; see the summary")
    return man
