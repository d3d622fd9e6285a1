"""One call for PEFT users: `auto_lora_config(model, tokenizer, texts_or_task) -> (LoraConfig, LoraReport)`.

    from plop_core import auto_lora_config
    config, report = auto_lora_config(model, tokenizer, "gsm8k", k=3, r=16)   # or a list of your texts
    print(report)                      # per-type NFN with intervals, stability, placement, token stats
    model = peft.get_peft_model(model, config)

Why: answering "which target_modules?" otherwise takes five calls (discover, sample, score, select,
to_lora_config). This is exactly those calls, in that order, with cheap checks first (k against the
model's placeable types, the texts or task) and a last check that PEFT's own matching rule reaches
exactly the placement's modules on this model. The report keeps the evidence (the `Scores` too) and
prints as plain text; `report.save(folder)` writes adapter_config.json + targets.md + report.json.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plop_core.placement import STRATEGIES, Placement


@dataclass(repr=False)
class LoraReport:
    """The evidence behind an `auto_lora_config` choice. `types`: per type nfn, nfn_ci_low, nfn_ci_high,
    layer_min, layer_max, layer_std, n_layers, chosen; `stability`: share of bootstrap resamples (over
    sequences) choosing the same types (NaN without bootstrap); `data`: what was scored."""

    placement: Placement
    types: pd.DataFrame
    stability: float
    estimator: str
    scoring: dict
    token_stats: dict
    data: dict
    lora: dict
    wall_s: float
    scores: Any = field(default=None, compare=False)
    config: Any = field(default=None, compare=False)

    def to_dict(self) -> dict:
        """JSON-able summary (no Scores object, no LoraConfig: see `save`)."""
        return {"schema": 1, "placement": self.placement.to_dict(), "types": _records(self.types),
                "stability": _num(self.stability), "estimator": self.estimator, "scoring": self.scoring,
                "token_stats": self.token_stats, "data": self.data, "lora": self.lora, "wall_s": self.wall_s}

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write adapter_config.json and targets.md (`peft_files.write_adapter_config`) and report.json."""
        import json

        from plop_core.atomic import atomic_write_text
        from plop_core.peft_files import write_adapter_config

        paths = write_adapter_config(self.config, folder, placement=self.placement)
        paths["report"] = atomic_write_text(Path(folder) / "report.json", json.dumps(self.to_dict(), indent=2))
        return paths

    def __str__(self) -> str:
        p, sc, ts, lo = self.placement, self.scoring, self.token_stats, self.lora
        what = self.data.get("task") or "your texts"
        ci_label = f"{100 * sc['ci_level']:.0f}% CI"
        lines = [f"PLoP placement: {p.strategy}" + (f" k={p.k}" if p.k else "") + f" -> {', '.join(p.types)}  "
                 f"({what}, {sc['n_sequences']} sequences, {sc['n_tokens']:,} tokens, estimator {self.estimator})",
                 f"{'type':6s} {'NFN':>7s}  {ci_label:>17s}  {'layer min..max':>15s}"]
        for r in self.types.sort_values("nfn").itertuples():
            ci = "" if np.isnan(r.nfn_ci_low) else f"[{r.nfn_ci_low:.3f}, {r.nfn_ci_high:.3f}]"
            lines.append(f"{r.type:6s} {r.nfn:7.3f}  {ci:>17s}  {f'{r.layer_min:.2f}..{r.layer_max:.2f}':>15s}"
                         + ("  <- LoRA" if r.chosen else ""))
        if np.isfinite(self.stability):
            lines.append(f"selection stability: {100 * self.stability:.0f}% of {sc['n_bootstrap']} bootstrap "
                         f"resamples (over sequences) choose the same {len(p.types)} types")
        lines.append(f"tokens per text: mean {ts['mean_tokens']:.1f}, median {ts['median_tokens']:.0f}, p95 "
                     f"{ts['p95_tokens']}, max {ts['max_tokens']}; {ts['n_truncated']} of {ts['n_texts']} "
                     f"truncated at max_length={ts['max_length']}")
        lines.append(f"LoraConfig: r={lo['r']}, lora_alpha={lo['lora_alpha']}, task_type={lo['task_type']}, "
                     f"{lo['n_modules']} modules in {lo['n_layers']} layers, {lo['trainable_params']:,} trainable "
                     f"LoRA parameters")
        lines.append(f"target_modules: {lo['target_modules_text']}")
        return "\n".join(lines)

    __repr__ = __str__


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (_num(v) if isinstance(v, (float, np.floating)) else v.item() if hasattr(v, "item") else v)
             for k, v in row.items()} for row in df.to_dict("records")]


def _texts_and_data(texts_or_task, n: int, seed: int, split: str, source: str):
    """(Sample, data description) from a task name, a Sample, or a list of texts."""
    from plop_core.data import Sample, sample_hash, sample_task

    if isinstance(texts_or_task, Sample):
        s = texts_or_task
        return s, {"task": s.meta.get("task"), "split": s.meta.get("split"), "seed": s.meta.get("seed"),
                   "n": len(s.texts), "sample_hash": s.sample_hash}
    if isinstance(texts_or_task, (str, Path)):
        s = sample_task(str(texts_or_task), n=n, seed=seed, split=split, source=source)
        return s, {"task": s.meta["task"], "split": split, "seed": seed, "n": len(s.texts),
                   "sample_hash": s.sample_hash, "source": s.meta.get("source")}
    texts = list(texts_or_task) if texts_or_task is not None else []
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if not texts or bad:
        raise ValueError("texts_or_task must be a task name (plop_core.list_tasks()), a Sample, or a non-empty "
                         f"list of strings; got {type(texts_or_task).__name__}"
                         + (f" with a {type(texts[bad[0]]).__name__} at index {bad[0]}" if bad else ""))
    ids = [str(i) for i in range(len(texts))]
    digest = sample_hash("texts", "", ids, texts)
    return Sample(rows=[{"id": i} for i in ids], texts=texts, sample_hash=digest), \
        {"task": None, "n": len(texts), "sample_hash": digest}


def auto_lora_config(model, tokenizer, texts_or_task, k: int = 3, r: int = 16, lora_alpha: int | None = None,
                     lora_dropout: float = 0.0, *, strategy: str = "plop", n: int = 128, seed: int = 0,
                     split: str = "train", source: str = "auto", max_length: int = 256, batch_size: int = 8,
                     estimator: str = "probe", n_probe: int = 512, n_bootstrap: int = 1000, ci_level: float = 0.95,
                     overrides: dict | None = None, baseline_cache=None, target_style: str = "auto",
                     progress: bool = False, **lora_kwargs):
    """Score `model` by NFN on a task or texts, choose where LoRA goes, return (peft.LoraConfig, LoraReport).

    texts_or_task: a task name (`plop_core.list_tasks()`; `n` rows drawn with `seed` from `split`), a
        `Sample`, or a list of your own texts (all are scored; 64+ recommended).
    k, strategy: the k module types with the lowest NFN (PLoP) by default; any `select_placement` strategy.
    r, lora_alpha (default 2r), lora_dropout, **lora_kwargs: the LoraConfig; task_type, base model and
        revision are taken from the model; target_style: "auto" | "list" | "regex" (Placement.to_lora_config).
    max_length, batch_size, estimator, n_probe, n_bootstrap, ci_level, baseline_cache: as in `score_nfn`.
    overrides: module-role overrides for `discover_candidates` (unusual architectures).
    """
    from plop_core.modules import discover_candidates
    from plop_core.nfn import score_nfn
    from plop_core.placement import check_k, select_placement

    t0 = time.perf_counter()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown placement strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if tokenizer is None and hasattr(model, "tokenizer") and hasattr(model, "model"):  # a LoadedModel
        model, tokenizer = model.model, model.tokenizer
    if tokenizer is None:
        raise ValueError("tokenizer is None; pass the model's tokenizer (AutoTokenizer.from_pretrained(...))")
    discovery = discover_candidates(model, overrides)
    check_k(discovery, strategy, k)
    sample, data = _texts_and_data(texts_or_task, n, seed, split, source)
    scores = score_nfn(model, tokenizer, sample.texts, batch_size=batch_size, max_length=max_length,
                       estimator=estimator, seed=seed, n_probe=n_probe, n_bootstrap=n_bootstrap, ci_level=ci_level,
                       candidates=discovery, baseline_cache=baseline_cache, progress=progress)
    placement = select_placement(scores, strategy=strategy, k=k, seed=seed)
    config = placement.to_lora_config(r, lora_alpha, lora_dropout, target_style=target_style, **lora_kwargs)
    placement.check_targets(config, model)
    types = scores.types.copy()
    types["chosen"] = types["type"].isin(placement.types)
    stability = scores.stability(len(placement.types), strategy) if STRATEGIES[strategy].needs_scores \
        else (1.0 if n_bootstrap else float("nan"))
    meta = scores.meta
    tm = config.target_modules
    lora = {"r": config.r, "lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout,
            "task_type": config.task_type, "base_model_name_or_path": config.base_model_name_or_path,
            "n_modules": len(placement.candidates), "n_layers": len({c.layer for c in placement.candidates}),
            "trainable_params": placement.trainable_params(config.r),
            "target_modules": tm if isinstance(tm, str) else list(placement.target_modules),
            "target_modules_text": (f"regex {tm}" if isinstance(tm, str) else
                                    f"{len(tm)} exact names, e.g. {placement.target_modules[0]}") if tm else
            f"none (packed experts: {len(placement.target_parameters)} target_parameters)"}
    scoring = {key: meta.get(key) for key in ("n_sequences", "n_tokens", "max_length", "truncated_share", "n_bootstrap",
                                              "ci_level", "seed", "n_probe", "dtype", "device")}
    return config, LoraReport(placement=placement, types=types, stability=stability, estimator=estimator,
                              scoring=scoring, token_stats=sample.token_stats(tokenizer, max_length), data=data,
                              lora=lora, wall_s=round(time.perf_counter() - t0, 3), scores=scores, config=config)
