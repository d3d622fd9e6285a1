"""What a finished sweep tells people: the markdown summary, the manifest, and where they are written.

Built from outcomes and result records only (no models, no orchestrator), so the serial runner and the
Prefect flow print and write the same summary; the flow also publishes it as a Prefect artifact.
"""

from __future__ import annotations

import os

from plop_core import artifacts, storage
from plop_core.config import SweepConfig
from plop_core.tracking import ui_command
from plop_core.units.layout import Layout
from plop_core.units.records import ExperimentResult, Outcome


def markdown_table(rows: list[dict]) -> str:
    """Rows (dicts with the same keys) as a GitHub markdown table."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def nfn_rows(outcomes: list[Outcome]) -> list[dict]:
    """One row per scored cell: model, task, per-type NFN (types in the first cell's order), placement."""
    rows = []
    for o in outcomes:
        if o.ok and o.unit.kind == "cell":
            r = o.result
            rows.append({"model": r.model_name, "task": r.task_name, **{t["type"]: round(t["nfn"], 3) for t in r.types},
                         "placement": ",".join(r.placement["types"])})
    return rows


def arm_rows(r: ExperimentResult) -> list[dict]:
    """One row per arm of an experiment's summary: types, rank, params, metric with its interval."""
    m = r.metric
    return [{"arm": s["arm"], "types": s.get("types") or "-", "rank": s.get("rank"), "params": s.get("trainable_params"),
             m: f"{s[m]:.4f}", "interval": f"[{s[m + '_low']:.3f}, {s[m + '_high']:.3f}]"} for s in r.summary]


def type_rows(rec) -> list[dict]:
    """One row per module type of a scored cell: NFN, interval, chosen or not."""
    chosen = set(rec.placement["types"])
    return [{"type": t["type"], "nfn": round(t["nfn"], 4),
             "ci": f"[{t.get('nfn_ci_low', float('nan')):.3f}, {t.get('nfn_ci_high', float('nan')):.3f}]",
             "chosen": "yes" if t["type"] in chosen else ""} for t in rec.types]


def summary_markdown(cfg: SweepConfig, layout: Layout, outcomes: list[Outcome], run_ids: dict[str, str], uri: str,
                     experiments: list[ExperimentResult] = ()) -> str:
    cells = [o for o in outcomes if o.unit.kind == "cell"]
    lines = [f"# plop sweep `{cfg.name}`", "", f"Results root: `{shown(layout.root)}`  ",
             f"MLflow: `{uri}` (experiment `{cfg.outputs.experiment}`); UI: `{ui_command(uri)}`", ""]
    table = nfn_rows(cells)
    if table:
        lines += ["## NFN per module type (lowest = where LoRA goes)", "", markdown_table(table), "", "## Cells", ""]
        lines.append(markdown_table([
            {"model": o.result.model_name, "task": o.result.task_name, "cached": o.cached,
             "MLflow run": run_ids.get(o.unit.key, ""), "Parquet (types)": f"`{o.result.files['types']}`"}
            for o in cells if o.ok]))
    for r in experiments:
        lines += ["", f"## Finetuning: {r.model_name} on {r.task_name} ({r.metric}, matched budget)", "",
                  markdown_table(arm_rows(r)), "", f"Chart: `{r.files['chart']}`  ",
                  f"Parquet: `{r.files['evaluation']}`"]
    failed = [o for o in outcomes if not o.ok]
    if failed:
        lines += ["", "## Failed units", ""] + [f"- {describe(o.unit)}: {o.error}" for o in failed]
    return "\n".join(lines) + "\n"


def shown(path: str) -> str:
    """A path as people read it: relative to the working directory when it lies below it (a URL as it is)."""
    if storage.is_remote(path):
        return str(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def describe(unit) -> str:
    if unit.kind == "cell":
        return f"score {unit.model_name} on {unit.task_name}"
    if unit.kind == "shard":
        return f"score {unit.model_name} on {unit.task_name} shard {unit.index + 1}/{unit.n_shards}"
    if unit.kind == "base":
        return f"evaluate base {unit.model.name} on {unit.task_name}"
    return f"finetune {unit.model.name}/{unit.task_name} {unit.arm} seed {unit.seed}"


def manifest(cfg: SweepConfig, layout: Layout, outcomes: list[Outcome], run_ids: dict[str, str], uri: str,
             experiments: list[ExperimentResult] = (), **extra) -> dict:
    """The sweep's machine-readable summary (manifest.json): every unit, cached or not, its files."""
    cells = [o for o in outcomes if o.unit.kind == "cell"]
    shards = [{"cell_key": o.unit.cell.key, "index": o.unit.index, "n_shards": o.unit.n_shards, "ok": o.ok,
               "cached": o.cached, "error": o.error, "files": o.result.files if o.ok else {},
               "runtime": o.result.runtime if o.ok else {}} for o in outcomes if o.unit.kind == "shard"]
    if shards:  # sharded cells only (scorer.shards > 1): each shard and where it ran
        extra = {"shards": shards, **extra}
    return {
        "sweep": cfg.name, "root": layout.root, "mlflow_uri": uri, "experiment": cfg.outputs.experiment,
        "config": cfg.model_dump(mode="json"),
        "cells": [{"cell_key": o.unit.key, "model_name": o.unit.model_name, "task_name": o.unit.task_name,
                   "ok": o.ok, "cached": o.cached, "error": o.error, "mlflow_run_id": run_ids.get(o.unit.key),
                   "files": o.result.files if o.ok else {}} for o in cells],
        "model_loads": sum(1 for o in outcomes if o.unit.kind in ("cell", "shard") and o.ok and not o.cached
                           and o.result.model_loaded),
        "experiments": [e.model_dump(mode="json") for e in experiments],
        "n_units": len(outcomes),
        "failed": [{"unit": describe(o.unit), "key": o.unit.key, "error": o.error} for o in outcomes if not o.ok],
        **extra}


def units_failed(man: dict):
    """The error a run with failed units ends with (`plop_core.errors.UnitsFailed`: names each failed unit
    and why, and where the partial results are), or None when every unit finished."""
    from plop_core.errors import UnitsFailed

    return UnitsFailed(man["failed"], man["n_units"], man.get("summary")) if man["failed"] else None


def write_sweep_report(layout: Layout, name: str, markdown: str, man: dict) -> tuple[str, str]:
    """manifest.json and summary.md under `<root>/sweeps/<name>/` (uploaded too for a remote root);
    returns their local paths (a remote root's staging folder)."""
    out = layout.sweep_dir(name)
    paths = (artifacts.atomic_write_json(out / "manifest.json", man), artifacts.atomic_write_text(out / "summary.md", markdown))
    layout.publish(*paths)
    return str(paths[0]), str(paths[1])
