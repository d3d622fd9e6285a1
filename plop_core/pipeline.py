"""The pipeline's units of work as plain functions: sample a task, key a cell, score a cell, write results.

Why: Prefect tasks (`tasks/`) and Ray only orchestrate; the work lives here so it runs (and is tested)
without any orchestrator, and the CLI, a notebook and a sweep produce the same files. Every function
takes and returns small JSON-able records (paths, hashes, per-type numbers), never models or tensors.

Cache keys: a scoring cell's key hashes everything that determines its numbers: the model identity key
(weights sha256 + dtype, or hub id + revision), the sample hash (the exact rows), the sampling/scorer/
selection configs and the code version (`artifacts.code_version()`). The key names the cell's files,
so "is this cell done?" is "does its Parquet file exist?" (resume after a kill).

A per-process model cache (`get_model`) lets a worker that scores several tasks of one model load it
once; `MODEL_LOADS` counts real loads so sweeps can report (and tests assert) how many happened.
"""

from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from plop_core import artifacts
from plop_core.config import (
    ModelSpec,
    SamplingConfig,
    ScorerConfig,
    SelectionConfig,
    SweepConfig,
    config_hash,
)

MODEL_LOADS: list[str] = []  # identity keys loaded by this process, in order
_MODEL_CACHE: OrderedDict[str, Any] = OrderedDict()
MODEL_CACHE_SIZE = int(os.environ.get("PLOP_MODEL_CACHE_SIZE", "1"))


def results_root(cfg: SweepConfig) -> Path:
    return Path(cfg.outputs.root).expanduser().resolve()


def task_label(task: str) -> str:
    """Partition label of a task: its registry name, or a local data file's stem."""
    p = Path(task)
    return artifacts.safe_label(p.stem if p.suffix else task)


# ---------------------------------------------------------------- samples


def prepare_sample(task: str, sampling: dict | SamplingConfig, root: str | Path) -> dict:
    """Draw the task's sample (deterministic in seed), write it once as Parquet, return its record."""
    from plop_core.data import resolve_task, sample_task

    sampling = SamplingConfig.model_validate(sampling) if isinstance(sampling, dict) else sampling
    spec = resolve_task(task)
    sample = sample_task(spec, n=sampling.n_samples, seed=sampling.seed, split=sampling.split,
                         allow_smaller=sampling.allow_smaller, source=sampling.source)
    path = Path(root) / "samples" / f"task={task_label(task)}" / f"{sample.sample_hash}.parquet"
    if not path.exists():
        sample.to_parquet(path)
    return {"task": task, "task_name": task_label(task), "sample_hash": sample.sample_hash, "path": str(path),
            "n_rows": len(sample.texts), "sampling": sampling.model_dump(mode="json")}


# ---------------------------------------------------------------- models


def model_record(spec: dict | ModelSpec) -> dict:
    """Identity of a model *without loading it*: resolves the source and hashes the weight files (cached)."""
    from plop_core.models import identity_key, resolve, weights_sha256

    spec = ModelSpec.model_validate(spec) if isinstance(spec, dict) else spec
    source, mid, folder = resolve(spec, progress=True)
    sha = weights_sha256(folder) if folder is not None else None
    ident = {"source": source, "id": mid, "path": str(folder) if folder else None, "revision": spec.revision,
             "sha256": sha, "dtype": spec.dtype, "task": "causal-lm"}
    return {"spec": spec.model_dump(mode="json"), "model_name": artifacts.safe_label(spec.label),
            "identity_key": identity_key(ident), "identity": ident}


def get_model(spec: dict | ModelSpec, key: str):
    """Load a model once per process (LRU of MODEL_CACHE_SIZE, default 1 to bound memory)."""
    if key in _MODEL_CACHE:
        _MODEL_CACHE.move_to_end(key)
        return _MODEL_CACHE[key]
    from plop_core.models import load_model

    spec = ModelSpec.model_validate(spec) if isinstance(spec, dict) else spec
    while len(_MODEL_CACHE) >= max(1, MODEL_CACHE_SIZE):
        _MODEL_CACHE.popitem(last=False)
    lm = load_model(spec, progress=False)
    MODEL_LOADS.append(key)
    _MODEL_CACHE[key] = lm
    return lm


# ---------------------------------------------------------------- cells


def scoring_cell_key(model: dict, sample: dict, cfg: SweepConfig) -> str:
    arms = list(cfg.finetune.arms) if cfg.finetune.method != "none" else []
    return config_hash("score", model["identity_key"], sample["sample_hash"], cfg.sampling.max_length,
                       cfg.scorer, cfg.selection, arms, artifacts.code_version())


def plan_scoring_cells(cfg: SweepConfig, models: list[dict], samples: dict[str, dict]) -> list[dict]:
    """One record per (model, task) cell, grouped by model (the order cells of one model run in)."""
    root = results_root(cfg)
    arms = [a for a in cfg.finetune.arms if "," not in a] if cfg.finetune.method != "none" else []
    strategies = list(dict.fromkeys([cfg.selection.strategy, *arms]))
    cells = []
    for m in models:
        for task in cfg.tasks:
            s = samples[task]
            key = scoring_cell_key(m, s, cfg)  # arms only add files: cells scored without them are re-run
            cells.append({
                "sweep": cfg.name, "root": str(root), "cell_key": key, "model": m, "task": task,
                "model_name": m["model_name"], "task_name": s["task_name"], "sample": s,
                "sampling": cfg.sampling.model_dump(mode="json"), "scorer": cfg.scorer.model_dump(mode="json"),
                "selection": cfg.selection.model_dump(mode="json"), "strategies": strategies,
                "arms": list(cfg.finetune.arms) if cfg.finetune.method != "none" else [],
                "r": cfg.finetune.lora.r, "lora_alpha": cfg.finetune.lora.lora_alpha,
                "config_hash": config_hash(cfg.sampling, cfg.scorer, cfg.selection),
            })
    return cells


def cell_dir(cell: dict) -> Path:
    """Folder of a cell's non-tabular files (heatmap PNG, placement and LoraConfig JSON, record)."""
    return (Path(cell["root"]) / "cells" / f"model={cell['model_name']}" / f"task={cell['task_name']}"
            / cell["cell_key"])


def cell_done(cell: dict) -> bool:
    """A cell is done when its record (written last, atomically) exists: the resume test."""
    return (cell_dir(cell) / "record.json").is_file()


def load_record(cell: dict) -> dict:
    return json.loads((cell_dir(cell) / "record.json").read_text())


def _provenance(cell: dict, identity: dict) -> artifacts.Provenance:
    return artifacts.Provenance(
        sweep=cell["sweep"], cell_key=cell["cell_key"], model_name=cell["model_name"], model_id=identity["id"],
        model_identity=cell["model"]["identity_key"], task_name=cell["task_name"],
        sample_hash=cell["sample"]["sample_hash"], sample_seed=cell["sampling"]["seed"],
        n_samples=cell["sample"]["n_rows"], estimator=cell["scorer"]["estimator"],
        scorer_seed=cell["scorer"]["seed"], config_hash=cell["config_hash"],
    )


def score_cell(cell: dict, progress: bool = False) -> dict:
    """Score one (model, task) cell and write its files; returns the cell's small record.

    Files: the `modules`, `types`, `parts` and `placements` tables in the results dataset, and in
    `cell_dir(cell)` the NFN heatmap PNG, placement.json, lora_config.json and record.json (last).
    """
    from plop_core.placement import select_placement
    from plop_core.plots import nfn_heatmap
    from plop_core.scoring_run import score_loaded

    t0 = time.perf_counter()
    n_loads = len(MODEL_LOADS)
    lm = get_model(cell["model"]["spec"], cell["model"]["identity_key"])
    loaded = len(MODEL_LOADS) > n_loads
    load_s = time.perf_counter() - t0
    sampling = SamplingConfig.model_validate(cell["sampling"])
    scorer = ScorerConfig.model_validate(cell["scorer"])
    selection = SelectionConfig.model_validate(cell["selection"])
    sc = score_loaded(lm, cell["task"], sampling, scorer, selection, out_dir=None, r=cell["r"],
                      lora_alpha=cell["lora_alpha"], progress=progress)
    if sc.sample_hash != cell["sample"]["sample_hash"]:
        raise RuntimeError(
            f"task {cell['task']!r} sampled different rows in the worker (hash {sc.sample_hash}) than in the "
            f"flow ({cell['sample']['sample_hash']}); its source changed during the sweep: rerun the sweep")
    identity = sc.identity
    prov = _provenance(cell, identity)
    root = cell["root"]
    files = {"modules": str(artifacts.write_cell_table(root, "modules", sc.scores.modules, prov)),
             "types": str(artifacts.write_cell_table(root, "types", sc.scores.types, prov))}
    parts = getattr(sc.scores, "parts", None)
    if parts is not None and len(parts):
        files["parts"] = str(artifacts.write_cell_table(root, "parts", parts, prov))
    placements = []
    for strategy in cell["strategies"]:
        p = sc.placement if strategy == selection.strategy else select_placement(
            sc.scores, strategy=strategy, k=selection.k, seed=selection.seed)
        stability = sc.scores.stability(len(p.types), strategy=strategy) if strategy.startswith("plop") else None
        placements.append(dict(strategy=strategy, k=selection.k, types=list(p.types),
                               target_modules=list(p.target_modules), n_modules=len(p.target_modules),
                               lora_rank=cell["r"], trainable_params=int(p.trainable_params(cell["r"])),
                               stability=stability))
    files["placements"] = str(artifacts.write_cell_table(root, "placements", placements, prov))
    out = cell_dir(cell)
    files["heatmap"] = str(nfn_heatmap(sc.scores.modules, out / "nfn_heatmap.png",
                                       title=f"NFN: {cell['model_name']} on {cell['task_name']}"))
    files["placement"] = str(artifacts.atomic_write_json(out / "placement.json", placements[0]))
    files["lora_config"] = str(artifacts.atomic_write_json(out / "lora_config.json", sc.lora_config))
    if cell.get("arms"):
        from plop_core.experiment import arm_placement

        arm_pl = {a: arm_placement(a, sc.scores, sc.scores.discovery, selection.k).to_dict() for a in cell["arms"]}
        files["arm_placements"] = str(artifacts.atomic_write_json(out / "arm_placements.json", arm_pl))
    types = sc.scores.types.sort_values("nfn")
    record = {
        "cell_key": cell["cell_key"], "model_name": cell["model_name"], "task_name": cell["task_name"],
        "model_identity": cell["model"]["identity_key"], "identity": identity,
        "sample_hash": cell["sample"]["sample_hash"], "config_hash": cell["config_hash"],
        "code_version": prov.code_version, "estimator": scorer.estimator,
        "types": json.loads(types.to_json(orient="records")),
        "placement": {k: v for k, v in placements[0].items() if k != "target_modules"},
        "placements": {p["strategy"]: p["types"] for p in placements},
        "files": files, "meta": _small(sc.scores.meta), "token_stats": _small(sc.token_stats),
        "model_loaded": loaded, "load_seconds": round(load_s, 3), "pid": os.getpid(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    artifacts.atomic_write_json(out / "record.json", record)
    return record


def _small(d: Any) -> dict:
    """JSON-safe copy of a dict of scalars (drops arrays and nested objects)."""
    out = {}
    for k, v in (d or {}).items():
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        if isinstance(v, str | int | float | bool) or v is None:
            out[k] = v
    return out


def scoring_summary(records: list[dict]):
    """Wide table: one row per cell, the per-type NFN as columns, plus the chosen types."""
    import pandas as pd

    rows = []
    for r in records:
        row = {"model": r["model_name"], "task": r["task_name"]}
        row.update({t["type"]: round(t["nfn"], 3) for t in r["types"]})
        row["placement"] = ",".join(r["placement"]["types"])
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(df) -> str:
    """A DataFrame as a GitHub markdown table (no extra dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- finetune arms (benchmark sweep)


def plan_finetune(rec: dict, task: str, cfg: SweepConfig) -> dict:
    """For one scored cell: each arm's placement and budget-matched rank, the train/held-out rows (JSON
    files), and one run record per (arm, seed) with its cache key. Nothing is trained here."""
    from plop_core.data import resolve_task
    from plop_core.experiment import budget_ranks, experiment_rows
    from plop_core.placement import Placement

    ft, ev = cfg.finetune, cfg.evaluation
    arm_pl = json.loads(Path(rec["files"]["arm_placements"]).read_text())
    ranks = budget_ranks({a: Placement.from_dict(d) for a, d in arm_pl.items()}, ft.lora.r, ft.budget_match)
    key = config_hash("finetune", rec["cell_key"], ft, ev, artifacts.code_version())
    fdir = Path(cfg.outputs.root).expanduser().resolve() / "finetune" / f"model={rec['model_name']}" \
        / f"task={rec['task_name']}" / key
    train_path, eval_path = fdir / "train_rows.json", fdir / "eval_rows.json"
    if not (train_path.exists() and eval_path.exists()):
        train, held = experiment_rows(resolve_task(task), ft.train_samples, ev.n_samples)
        artifacts.atomic_write_json(train_path, train)
        artifacts.atomic_write_json(eval_path, held)
    model = rec["identity"].get("path") or rec["identity"]["id"]
    runs = [{"arm": a, "seed": int(seed), "rank": ranks[a]["rank"], "target_params": ranks[a]["target_params"],
             "placement": arm_pl[a], "model": model, "task": task, "model_name": rec["model_name"],
             "task_name": rec["task_name"], "finetune": ft.model_dump(mode="json"),
             "evaluation": ev.model_dump(mode="json"), "train_rows": str(train_path), "eval_rows": str(eval_path),
             "out_dir": str(fdir / "runs"), "run_key": config_hash(key, a, int(seed))}
            for a in ft.arms for seed in ft.seeds]
    return {"dir": str(fdir), "key": key, "runs": runs, "model": model, "task": task,
            "base_key": config_hash(key, "base")}


def run_done(run: dict) -> bool:
    return (Path(run["out_dir"]) / f"{run['run_key']}.json").is_file()


def finetune_run(run: dict) -> dict:
    """Finetune and evaluate one (arm, seed) (plop_core.experiment.run_arm); the record is kept as JSON."""
    from plop_core.experiment import run_arm

    rec = run_arm(run["model"], run["task"], run["placement"], run["rank"], run["seed"], run["finetune"],
                  run["evaluation"], run["train_rows"], run["eval_rows"], run["out_dir"], arm=run["arm"])
    rec["target_params"] = run["target_params"]
    artifacts.atomic_write_json(Path(run["out_dir"]) / f"{run['run_key']}.json", rec)
    return rec


def evaluate_base_model(plan: dict, model_spec: dict, model_key: str) -> dict:
    """The base model (no adapter) on the same held-out rows: the floor every arm is compared with."""
    from plop_core.config import EvalConfig, FinetuneConfig
    from plop_core.data import resolve_task
    from plop_core.experiment import eval_instruction, evaluate_base

    run = plan["runs"][0]
    lm = get_model(model_spec, model_key)
    rows = json.loads(Path(run["eval_rows"]).read_text())
    instruction = eval_instruction(FinetuneConfig.model_validate(run["finetune"]))  # as the arms are evaluated
    return evaluate_base(lm, resolve_task(plan["task"]), rows, EvalConfig.model_validate(run["evaluation"]),
                         run["finetune"]["max_length"], instruction=instruction)


def finish_experiment(rec: dict, plan: dict, arm_recs: list[dict], base: dict | None, cfg: SweepConfig,
                      sweep: str) -> dict:
    """Summary with intervals (plop_core.experiment.summarize), training/evaluation tables, comparison PNG."""
    import pandas as pd

    from plop_core.experiment import summarize
    from plop_core.plots import comparison_chart

    metrics = list(cfg.evaluation.metrics)
    allrecs = ([base] if base else []) + arm_recs
    per_row = {(r["arm"], r["seed"]): r.get("per_row", {}) for r in allrecs}
    runs = pd.DataFrame([{k: v for k, v in r.items() if k != "per_row"} for r in allrecs])
    summary = summarize(runs, per_row, metrics, cfg.evaluation.ci_level)
    prov = artifacts.Provenance(
        sweep=sweep, cell_key=plan["key"], model_name=rec["model_name"], model_id=rec["identity"]["id"],
        model_identity=rec["model_identity"], task_name=rec["task_name"], sample_hash=rec["sample_hash"],
        sample_seed=cfg.sampling.seed, n_samples=cfg.finetune.train_samples, estimator=rec["estimator"],
        scorer_seed=cfg.scorer.seed, config_hash=config_hash(cfg.finetune, cfg.evaluation))
    train_rows, eval_rows = [], []
    for r in arm_recs:
        for step, loss in enumerate(r.get("losses") or [r.get("first_loss"), r.get("final_loss")]):
            train_rows.append(dict(arm=r["arm"], seed=r["seed"], step=step, loss=loss, learning_rate=None))
    for r in allrecs:
        for m in metrics:
            eval_rows.append(dict(arm=r["arm"], seed=r["seed"], strategy=r["arm"], types=r.get("types") or [],
                                  lora_rank=r.get("rank"), trainable_params=r.get("trainable_params"), metric=m,
                                  value=r.get(m), ci_low=r.get(f"{m}_low"), ci_high=r.get(f"{m}_high"),
                                  n=r.get(f"{m}_n"), train_loss_final=r.get("final_loss"),
                                  train_seconds=r.get("train_s")))
    files = {"evaluation": str(artifacts.write_cell_table(cfg.outputs.root, "evaluation", eval_rows, prov))}
    if train_rows:
        files["training"] = str(artifacts.write_cell_table(cfg.outputs.root, "training", train_rows, prov))
    m = metrics[0]
    chart_df = pd.DataFrame([{"arm": r["arm"], "seed": r["seed"], "value": r.get(m), "ci_low": r.get(f"{m}_low"),
                              "ci_high": r.get(f"{m}_high")} for r in allrecs])
    files["chart"] = str(comparison_chart(chart_df, Path(plan["dir"]) / f"comparison_{m}.png", metric=m,
                                          title=f"{rec['model_name']} on {rec['task_name']}: {m} by arm"))
    files["summary"] = str(artifacts.write_parquet_atomic(summary, Path(plan["dir"]) / "summary.parquet"))
    return {"model_name": rec["model_name"], "task_name": rec["task_name"], "metric": m, "files": files,
            "summary": json.loads(summary.to_json(orient="records"))}
