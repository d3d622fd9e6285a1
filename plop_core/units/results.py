"""The one writer of unit results, and the one rule for "this unit is done and loadable".

Writer: a unit's tables go through `plop_core.artifacts` (declared schema + provenance columns, atomic
write) into its layout (`hive` for sweeps, `flat` for `plop score` / `plop compare`); its other files
(PNG, placement.json, LoRA config, adapters) into the unit's folder; its record (`record.json`,
listing every file relative to the root) is written LAST, atomically.

Done-rule (`load_done`): a unit is done when its record exists, parses as the unit's result type,
carries the unit's key, and every file it lists is inside the root and readable (Parquet footers are
read). Anything else (no record, a deleted or truncated Parquet file, a stale key, a record that points
outside the root) means "not done": the runner recomputes that unit and only it. The Prefect tasks
show the same decision as a `Cached` state; there is no second cache.

Object-store root (`s3://...`, plop_core.storage): the files are written to the staging folder as above,
then uploaded one object each, the record LAST (the commit marker); the done-rule reads the record and
checks the listed files on the store, so a unit whose upload was cut off is not done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from plop_core import artifacts
from plop_core.runtime_info import runtime
from plop_core.units.layout import Layout
from plop_core.units.records import (
    BaseEval,
    CellResult,
    Experiment,
    ExperimentResult,
    FinetuneRun,
    RunResult,
    ScoringCell,
    ScoringShard,
    ShardResult,
)


def load_done(unit: ScoringCell | FinetuneRun | BaseEval | Experiment) -> Any | None:
    """The unit's result if it is done and loadable, else None (see the module docstring)."""
    cls = {"cell": CellResult, "shard": ShardResult, "arm": RunResult, "base": RunResult}.get(getattr(unit, "kind", ""), ExperimentResult)
    lay = unit.layout
    try:  # a remote root: the record and the files it lists are read on the store, not the staging folder
        result = cls.model_validate_json(lay.read_text(unit.record))
    except (OSError, ValueError, ValidationError):
        return None
    if result.key != unit.key:
        return None
    try:
        paths = [lay.inside(rel) for rel in result.files.values()]
    except ValueError:
        return None
    return result if all(lay.readable(p) for p in paths) else None


def write_record(unit, result, also: tuple = ()) -> Any:
    """Write `result` as the unit's record (last step of every unit). A remote root: the files the record
    lists (and the folders in `also`) are uploaded first, the record last (the commit marker)."""
    lay = unit.layout
    lay.publish(*(lay.inside(rel) for rel in result.files.values()), *also)
    artifacts.atomic_write_text(unit.record, result.model_dump_json(indent=2) + "\n")
    lay.publish(unit.record)
    return result


def _json(path: Path, obj: Any) -> Path:
    return artifacts.atomic_write_json(path, obj)


def provenance(run_name: str, key: str, model, task_name: str, sample_hash: str, sample_seed: int,
               n_samples: int, estimator: str, scorer_seed: int, config_hash: str) -> artifacts.Provenance:
    return artifacts.Provenance(
        sweep=run_name, cell_key=key, model_name=model.name, model_id=model.identity["id"],
        model_identity=model.identity_key, task_name=task_name, sample_hash=sample_hash, sample_seed=sample_seed,
        n_samples=n_samples, estimator=estimator, scorer_seed=scorer_seed, config_hash=config_hash)


def write_table(layout: Layout, table: str, rows: Any, prov: artifacts.Provenance) -> str:
    path = layout.table_path(table, prov.model_name, prov.task_name, prov.cell_key)
    artifacts.write_parquet_atomic(artifacts.to_arrow(rows, table, prov), path)
    return layout.rel(path)


# ---------------------------------------------------------------- scoring cells


def placement_row(placement, strategy: str, k: int, r: int, stability: float | None) -> dict:
    """A row of the `placements` table."""
    return dict(strategy=strategy, k=k, types=list(placement.types), target_modules=list(placement.target_modules),
                n_modules=len(placement.target_modules), lora_rank=r, trainable_params=int(placement.trainable_params(r)),
                stability=stability)


def write_cell(cell: ScoringCell, scores, placements: dict, arm_placements: dict, model, identity: dict,
               token_stats: dict, timing: dict, shard_files: dict | None = None) -> CellResult:
    """Write a scored cell's tables, placement files (placement.json; adapter_config.json and targets.md,
    which PEFT loads as they are, checked against `model`) and heatmap, then its record."""
    from plop_core.peft_files import write_adapter_config
    from plop_core.plots import nfn_heatmap

    lay, sel = cell.layout, cell.selection
    prov = cell_provenance(cell)
    files = {name: write_table(lay, name, getattr(scores, name), prov) for name in ("modules", "types")}
    if scores.parts is not None and len(scores.parts):
        files["parts"] = write_table(lay, "parts", scores.parts, prov)
    rows = []
    for strategy, p in placements.items():
        stab = scores.stability(len(p.types), strategy=strategy) if strategy.startswith("plop") else None
        rows.append(placement_row(p, strategy, sel.k, cell.r, None if stab is None else float(stab)))
    files["placements"] = write_table(lay, "placements", rows, prov)
    d = cell.dir
    title = f"NFN: {cell.model_name} on {cell.task_name}"
    files["heatmap"] = lay.rel(nfn_heatmap(scores.modules, d / "nfn_heatmap.png", title=title))
    files["placement"] = lay.rel(_json(d / "placement.json", placements[sel.strategy].to_dict()))
    peft = write_adapter_config(placements[sel.strategy], d, r=cell.r, lora_alpha=cell.lora_alpha, model=model)
    files.update({name: lay.rel(path) for name, path in peft.items()})
    if arm_placements:
        arm_pl = {a: {str(s): p.to_dict() for s, p in by_seed.items()} for a, by_seed in arm_placements.items()}
        files["arm_placements"] = lay.rel(_json(d / "arm_placements.json", arm_pl))
    if lay.kind == "flat":
        files["sample"] = cell.sample.path
    files.update(shard_files or {})  # sharded: the `sequences` files merged (the done-rule checks them too)
    types = scores.types.sort_values("nfn")
    chosen = next(r for r in rows if r["strategy"] == sel.strategy)
    result = CellResult(
        key=cell.key, model_name=cell.model_name, task_name=cell.task_name, model_identity=cell.model.identity_key,
        identity=identity, sample_hash=cell.sample.sample_hash, config_hash=prov.config_hash,
        code_version=prov.code_version, estimator=cell.scorer.estimator,
        types=json.loads(types.to_json(orient="records")),
        placement={k: v for k, v in chosen.items() if k != "target_modules"},
        placements={r["strategy"]: r["types"] for r in rows}, files=files, meta=_scalars(scores.meta),
        token_stats=_scalars(token_stats), runtime=prov.runtime, **timing)
    return write_record(cell, result)


def cell_provenance(cell: ScoringCell) -> artifacts.Provenance:
    return provenance(cell.run_name, cell.key, cell.model, cell.task_name, cell.sample.sample_hash,
                      cell.sample.sampling.seed, cell.sample.n_rows, cell.scorer.estimator, cell.scorer.seed,
                      config_hash(cell))


def write_shard(shard: ScoringShard, partial, timing: dict) -> ShardResult:
    """A shard's per-sequence statistics as the `sequences` table (the part's other numbers, its baselines and
    token counts, in the file's key-value metadata under `plop_partial`), then its record."""
    prov = cell_provenance(shard.cell)
    frame, meta = partial.to_frame()
    frame.insert(0, "shard", shard.index)
    frame.insert(1, "n_shards", shard.n_shards)
    table = artifacts.to_arrow(frame, "sequences", prov)
    table = table.replace_schema_metadata({**table.schema.metadata, b"plop_partial": json.dumps(meta).encode()})
    path = shard.layout.shard_path(shard.model_name, shard.task_name, shard.key, shard.index, shard.n_shards)
    artifacts.write_parquet_atomic(table, path)
    result = ShardResult(key=shard.key, cell_key=shard.cell.key, index=shard.index, n_shards=shard.n_shards,
                         start=shard.start, stop=shard.stop, n_sequences=len(partial.sequence_index),
                         n_tokens=partial.n_tokens, files={"sequences": shard.layout.rel(path)},
                         runtime=prov.runtime, **timing)
    return write_record(shard, result)


def read_shard(shard: ScoringShard, result: ShardResult):
    """The `PartialScores` a shard wrote (exact: float64 through Parquet)."""
    import pyarrow.parquet as pq

    from plop_core.shards import PartialScores

    table = pq.read_table(shard.layout.resolve(result.files["sequences"]))
    meta = json.loads(table.schema.metadata[b"plop_partial"])
    return PartialScores.from_frame(table.select(["sequence_index", "full_length", "unit", "module", "sum_a", "count",
                                                  "sum_a_rho", "sum_b", "sum_b2"]).to_pandas(), meta)


def config_hash(cell: ScoringCell) -> str:
    from plop_core.config import config_hash as h

    return h(cell.sample.sampling, cell.scorer, cell.selection)


def _scalars(d: dict | None) -> dict:
    """JSON-safe copy of a dict's scalar entries (drops arrays and nested objects)."""
    out = {}
    for k, v in (d or {}).items():
        if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
            v = v.item()
        if isinstance(v, str | int | float | bool) or v is None:
            out[k] = v
    return out


# ---------------------------------------------------------------- finetuning


def write_run(unit: FinetuneRun | BaseEval, train: dict, evaluation, extra: dict) -> RunResult:
    """Record of a trained arm (or the base model): metrics with intervals, per-row values, training summary."""
    files, also = {}, ()
    if train.get("adapter_dir"):
        adir = Path(train["adapter_dir"])
        files = {f.stem: unit.layout.rel(f) for f in sorted(adir.glob("adapter_*")) if f.is_file()}
        train = {**train, "adapter_dir": unit.layout.rel(adir)}
        also = (adir,)  # the whole PEFT folder (the tracker logs it as the run's adapter)
    result = RunResult(kind=unit.kind, key=unit.key, metrics=evaluation.flat(), eval_s=evaluation.wall_s,
                       per_row={m: r.per_row for m, r in evaluation.metrics.items()}, train=train, files=files,
                       runtime=runtime(), **extra)
    return write_record(unit, result, also)


def write_experiment(exp: Experiment, base: RunResult | None, arms: list[RunResult], metrics: list[str],
                     ci_level: float, sample_hash: str, estimator: str) -> ExperimentResult:
    """Summary with intervals (plop_core.comparison), the training and evaluation tables and a chart."""
    import pandas as pd

    from plop_core.comparison import summarize
    from plop_core.plots import comparison_chart

    allrecs = ([base] if base is not None else []) + arms
    runs = pd.DataFrame([r.row() for r in allrecs])
    per_row = {(r.arm, r.seed): r.per_row for r in allrecs}
    summary = summarize(runs, per_row, metrics, ci_level)
    model = exp.base.model
    prov = provenance(exp.run_name, exp.key, model, exp.task_name, sample_hash, 0, exp.runs[0].finetune.train_samples,
                      estimator, 0, exp.key)
    lay = exp.layout
    eval_rows = [dict(arm=r.arm, seed=r.seed, strategy=r.arm, types=[t for t in r.types.split(",") if t],
                      lora_rank=r.rank, trainable_params=r.trainable_params, metric=m, value=r.metrics.get(m),
                      ci_low=r.metrics.get(f"{m}_low"), ci_high=r.metrics.get(f"{m}_high"), n=r.metrics.get(f"{m}_n"),
                      train_loss_final=r.train.get("final_loss"), train_seconds=r.train.get("train_s"))
                 for r in allrecs for m in metrics]
    files = {"evaluation": write_table(lay, "evaluation", eval_rows, prov)}
    train_rows = [dict(arm=r.arm, seed=r.seed, **row) for r in arms for row in r.train.get("curve") or []]
    if train_rows:
        files["training"] = write_table(lay, "training", train_rows, prov)
    m = metrics[0]
    chart = pd.DataFrame([{"arm": r.arm, "seed": r.seed, "value": r.metrics.get(m), "ci_low": r.metrics.get(f"{m}_low"),
                           "ci_high": r.metrics.get(f"{m}_high")} for r in allrecs])
    files["chart"] = lay.rel(comparison_chart(chart, exp.dir / f"comparison_{m}.png", metric=m,
                                              title=f"{exp.model_name} on {exp.task_name}: {m} by arm"))
    for name, df in (("summary", summary), ("runs", runs)):  # with the provenance columns, like every table
        files[name] = lay.rel(artifacts.write_parquet_atomic(artifacts.to_arrow(df, name, prov), exp.dir / f"{name}.parquet"))
    result = ExperimentResult(key=exp.key, model_name=exp.model_name, task_name=exp.task_name, metric=m,
                              reference_params=exp.reference_params,
                              summary=json.loads(summary.to_json(orient="records")), files=files)
    return write_record(exp, result)
