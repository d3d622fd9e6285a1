"""One scoring cell, end to end: load model -> sample task -> score NFN -> select placement -> write files.

This is the unit of work behind `plop score` and the pipeline's scoring task alike, so a notebook, the
CLI and a Prefect/Ray sweep produce byte-for-byte the same kinds of files. Everything written into
`out_dir` is written atomically (temp file, then rename): a killed run leaves no half-written file.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plop_core.config import ModelSpec, SamplingConfig, ScorerConfig, SelectionConfig, config_hash


@dataclass
class ScoreCell:
    """What a scoring cell produced: tables, placement, provenance, and where the files are."""

    model_label: str
    task: str
    scores: Any  # plop_core.nfn.Scores
    placement: Any  # plop_core.placement.Placement
    identity: dict
    sample_hash: str
    token_stats: dict
    lora_config: dict
    files: dict[str, str] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)


def _lora_config_dict(lora_config) -> dict:
    d = lora_config.to_dict()
    return json.loads(json.dumps(d, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def score_loaded(lm, data: str, sampling: SamplingConfig, scorer: ScorerConfig, selection: SelectionConfig,
                 out_dir: Path | None = None, *, text_column: str | None = None, r: int = 16,
                 lora_alpha: int | None = None, progress: bool = True, baseline_cache=None) -> ScoreCell:
    """Score an already loaded model (`plop_core.models.LoadedModel`) on `data` (task name or file)."""
    from plop_core.data import resolve_task, sample_task
    from plop_core.modules import discover_candidates
    from plop_core.nfn import score_nfn
    from plop_core.placement import check_k, select_placement

    spec = resolve_task(data, text_column=text_column) if text_column else resolve_task(data)
    discovery = discover_candidates(lm.model)
    check_k(discovery, selection.strategy, selection.k)  # before sampling and scoring, not after
    sample = sample_task(spec, n=sampling.n_samples, seed=sampling.seed, split=sampling.split,
                         allow_smaller=sampling.allow_smaller, source=sampling.source)
    token_stats = sample.token_stats(lm.tokenizer, sampling.max_length)
    t0 = time.perf_counter()
    scores = score_nfn(lm.model, lm.tokenizer, sample.texts, batch_size=scorer.batch_size,
                       max_length=sampling.max_length, estimator=scorer.estimator, seed=scorer.seed,
                       n_probe=scorer.n_probe, n_bootstrap=scorer.n_bootstrap, ci_level=scorer.ci_level,
                       include_padding=scorer.include_padding, candidates=discovery, baseline_cache=baseline_cache,
                       progress=progress)
    score_s = time.perf_counter() - t0
    placement = select_placement(scores, strategy=selection.strategy, k=selection.k, seed=selection.seed)
    identity = lm.identity.to_dict()
    provenance = {
        "model": identity,
        "task": spec.name,
        "sample_hash": sample.sample_hash,
        "config_hash": config_hash(sampling, scorer, selection),
        "seed": scorer.seed,
        "estimator": scorer.estimator,
        "score_seconds": round(score_s, 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    cell = ScoreCell(
        model_label=identity.get("id", "model"), task=spec.name, scores=scores, placement=placement,
        identity=identity, sample_hash=sample.sample_hash, token_stats=token_stats,
        lora_config=_lora_config_dict(placement.to_lora_config(r=r, lora_alpha=lora_alpha)),
        provenance=provenance,
    )
    if out_dir is not None:
        write_cell(cell, Path(out_dir), sample=sample)
    return cell


def score_cell(model: ModelSpec, data: str, sampling: SamplingConfig, scorer: ScorerConfig,
               selection: SelectionConfig, out_dir: Path | None = None, *, text_column: str | None = None,
               **kw) -> ScoreCell:
    """Load `model` (asset, path or hub id) and score it on `data`; see `score_loaded`."""
    from plop_core.data import resolve_task
    from plop_core.models import load_model

    resolve_task(data, text_column=text_column) if text_column else resolve_task(data)  # fail before loading
    lm = load_model(model)
    return score_loaded(lm, data, sampling, scorer, selection, out_dir, text_column=text_column, **kw)


def write_cell(cell: ScoreCell, out_dir: Path, sample=None) -> dict[str, str]:
    """Write the cell's tables (Parquet with provenance metadata), placement, LoraConfig and heatmap."""
    from plop_core.artifacts import atomic_write_text, write_parquet_atomic
    from plop_core.plots import nfn_heatmap

    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"provenance": cell.provenance, "scores_meta": cell.scores.meta, "token_stats": cell.token_stats}
    files = {}
    for name in ("modules", "types", "parts"):
        df = getattr(cell.scores, name)
        if df is not None and len(df):
            files[name] = str(write_parquet_atomic(df, out_dir / f"{name}.parquet", metadata=meta))
    files["placement"] = str(atomic_write_text(out_dir / "placement.json",
                                               json.dumps(cell.placement.to_dict(), indent=2)))
    files["lora_config"] = str(atomic_write_text(out_dir / "lora_config.json", json.dumps(cell.lora_config, indent=2)))
    if sample is not None:
        files["sample"] = str(sample.to_parquet(out_dir / "sample.parquet"))
    files["heatmap"] = str(nfn_heatmap(cell.scores, out_dir / "nfn_heatmap.png",
                                       title=f"NFN: {cell.model_label} on {cell.task}"))
    cell.files = files
    return files


def print_cell(cell: ScoreCell, console=None) -> None:
    """Print the per-type NFN table (with CI and layer spread), the placement and its stability."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 110)  # logs/pipes: don't wrap at 80
    types = cell.scores.types.sort_values("nfn")
    chosen = set(cell.placement.types)
    meta = cell.scores.meta
    console.print(f"NFN by module type: {cell.model_label} on {cell.task} ({meta.get('n_sequences')} sequences, "
                  f"{meta.get('n_tokens')} tokens, estimator {meta.get('estimator')}; * = chosen)")
    t = Table()
    for col in ("type", "NFN", "95% CI", "layer min", "layer max", "chosen"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for row in types.itertuples():
        t.add_row(row.type, f"{row.nfn:.3f}", f"[{row.nfn_ci_low:.3f}, {row.nfn_ci_high:.3f}]",
                  f"{row.layer_min:.3f}", f"{row.layer_max:.3f}", "*" if row.type in chosen else "")
    console.print(t)
    ts = cell.token_stats
    if ts:
        console.print(f"tokens/sequence: mean {ts['mean_tokens']:.1f}, p95 {ts['p95_tokens']}, max {ts['max_tokens']}; "
                      f"{ts['n_truncated']} of {ts['n_texts']} truncated at max_length={ts['max_length']}")
    stab = cell.scores.stability(len(cell.placement.types)) if cell.placement.strategy == "plop" else None
    line = f"placement ({cell.placement.strategy}): {', '.join(cell.placement.types)} -> " \
           f"{len(cell.placement.target_modules)} modules"
    if stab is not None:
        line += f"; selection stability {100 * stab:.0f}% of bootstrap resamples"
    console.print(line)
    for k, v in cell.files.items():
        console.print(f"  {k:12s} {v}")
