"""Arms x seeds at a matched trainable-parameter budget: the experiment that proves (or not) a placement.

Why: the paper compares placements (plop, plop_inverse, attn, mlp, all, ...) at the same number of
trainable parameters by adjusting each arm's LoRA rank (e.g. attn at r=25 vs plop at r=16). An
experiment is (model, task, arms, seeds, budget): score NFN once (when an arm needs it), choose each
arm's placement, match ranks to the plop arm's count (`Placement.trainable_params` / `match_rank`),
finetune each (arm, seed) from a fresh base model, evaluate on held-out rows disjoint from training
rows, and evaluate the base model (no adapter) too.

`run_arm(...)` is the per-(arm, seed) unit with JSON-able inputs and a dict output, so an orchestrator
(Prefect/Ray, outside plop_core) can fan arms out; `run_experiment` runs them one after another here.
Results: `runs` (one row per arm and seed, plus `base`) and `summary` (per arm: mean and interval,
difference from plop with a paired t-test across seeds, and a paired t-test across eval rows).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from plop_core.config import EvalConfig, FinetuneConfig, ModelSpec, SamplingConfig, ScorerConfig

REFERENCE_ARM = "plop"


@dataclass
class ExperimentResult:
    runs: pd.DataFrame
    summary: pd.DataFrame
    placements: dict[str, dict] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def table(self, metric: str | None = None) -> str:
        return format_summary(self.summary, metric or self.meta.get("primary_metric"))


# ----------------------------------------------------------------------------- rows and placements


def _eval_split(spec) -> str:
    names = spec.splits()
    for s in ("eval", "test", "validation"):
        if s in names:
            return s
    raise ValueError(f"task {spec.name!r} has no held-out split (eval/test/validation); splits: {names}")


def experiment_rows(spec, n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Training rows (train split) and held-out rows (eval split), disjoint by row id."""
    from plop_core.data import sample_task

    train = sample_task(spec, n=n_train, seed=seed, split="train", allow_smaller=True).rows
    ids = {r["id"] for r in train}
    held = [r for r in sample_task(spec, n=n_eval, seed=seed, split=_eval_split(spec), allow_smaller=True).rows
            if r["id"] not in ids]
    if not held:
        raise ValueError(f"task {spec.name!r}: no held-out rows disjoint from the {len(train)} training rows")
    return train, held


def arm_placement(arm: str, scores, discovery, k: int = 3, seed: int = 0):
    """The Placement of an arm: a strategy name (random drawn with `seed`) or explicit types like 'q,v'."""
    from plop_core.placement import STRATEGIES, placement_from_types, select_placement

    if arm in STRATEGIES:
        if STRATEGIES[arm].needs_scores and scores is None:
            raise ValueError(f"arm {arm!r} needs NFN scores; pass scores= or let run_experiment score the model")
        return select_placement(scores if scores is not None else discovery, arm, k=k, seed=seed)
    if "," in arm or arm in discovery.types:
        return placement_from_types(discovery, arm, strategy=arm)
    raise ValueError(f"unknown arm {arm!r}; use a strategy ({', '.join(STRATEGIES)}) or explicit types like 'q,v' "
                     f"(placeable here: {', '.join(discovery.types)})")


def budget_ranks(placements: dict, r: int, budget_match: bool = True, reference: str = REFERENCE_ARM) -> dict:
    """Rank per arm: matched to the reference arm's trainable count at rank r (or r everywhere)."""
    from plop_core.placement import match_rank

    ref = reference if reference in placements else next(iter(placements))
    target = placements[ref].trainable_params(r)
    out = {}
    for arm, p in placements.items():
        rank = match_rank(p, target) if budget_match else r
        out[arm] = {"rank": int(rank), "trainable_params": int(p.trainable_params(rank)),
                    "target_params": int(target), "reference_arm": ref}
    return out


# ----------------------------------------------------------------------------- one (arm, seed)


def _rows(rows_or_path) -> list[dict]:
    if isinstance(rows_or_path, (str, Path)):
        return json.loads(Path(rows_or_path).read_text())
    return list(rows_or_path)


def run_arm(model: str, task: str, placement: dict, rank: int, seed: int, finetune: dict, evaluation: dict,
            train_rows, eval_rows, out_dir: str, arm: str | None = None) -> dict:
    """Finetune one (arm, seed) from a fresh base model and evaluate it. JSON-able in and out.

    model: a local folder (preferred: what `load_model` resolved), asset name or hub id.
    task: task name or local data file (resolved with `plop_core.data.resolve_task`).
    placement: `Placement.to_dict()`; rank: the arm's LoRA rank; finetune / evaluation: the config dicts.
    train_rows / eval_rows: lists of row dicts or paths to JSON files holding them.
    """
    from plop_core.data import resolve_task
    from plop_core.evaluate import evaluate_model
    from plop_core.placement import Placement
    from plop_core.train.grpo import train_grpo
    from plop_core.train.sft import train_sft

    ft, ev = FinetuneConfig.model_validate(finetune), EvalConfig.model_validate(evaluation)
    spec = resolve_task(task)
    pl = Placement.from_dict(placement)
    ratio = (ft.lora.lora_alpha / ft.lora.r) if ft.lora.lora_alpha is not None else 2.0
    lcfg = pl.to_lora_config(r=rank, lora_alpha=max(1, round(ratio * rank)), lora_dropout=ft.lora.lora_dropout,
                             task_type="CAUSAL_LM")
    arm = arm or pl.strategy
    run_dir = Path(out_dir) / f"{_safe(arm)}_seed{seed}"
    from plop_core.train.common import load_fresh_model

    base, tok = load_fresh_model(model)
    if ft.method == "grpo":
        rows = [spec.grpo_example(r, tok) for r in _rows(train_rows)]
        res = train_grpo(base, tok, rows, lcfg, ft, run_dir, seed=seed, keep_model=True)
    elif ft.method == "sft":
        rows = [spec.sft_example(r, tok) for r in _rows(train_rows)]
        res = train_sft(base, tok, rows, lcfg, ft, run_dir, seed=seed, keep_model=True)
    else:
        raise ValueError("finetune.method is 'none'; set it to 'sft' or 'grpo' to compare arms")
    del base
    er = evaluate_model(res.model, tok, spec, _rows(eval_rows), ev.metrics, batch_size=ev.batch_size,
                        max_new_tokens=ev.max_new_tokens, ci_level=ev.ci_level, n_bootstrap=ev.n_bootstrap,
                        rel_tol=ev.rel_tol, max_length=ft.max_length, seed=0, instruction=eval_instruction(ft))
    out = {"arm": arm, "seed": int(seed), "types": ",".join(pl.types), "rank": int(rank),
           "n_modules": len(pl.target_modules), **_train_record(res), **er.flat(), "eval_s": er.wall_s,
           "per_row": {m: r.per_row for m, r in er.metrics.items()}}
    from plop_core.artifacts import atomic_write_text

    atomic_write_text(run_dir / "run.json", json.dumps(out, default=float))
    return out


def _train_record(res) -> dict:
    d = res.to_dict()
    return {"trainable_params": d["trainable_params"], "first_loss": d["first_loss"], "final_loss": d["final_loss"],
            "mean_reward": float(np.mean(d["rewards"])) if d["rewards"] else None,
            "tokens_per_s": d["tokens_per_s"], "peak_mem_mb": d["peak_mem_mb"], "train_s": d["wall_s"],
            "steps": d["steps"], "adapter_dir": d["adapter_dir"]}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def eval_instruction(ft: FinetuneConfig) -> str | None:
    """The instruction exact_match prompts carry: GRPO's answer-format instruction for GRPO runs, else None."""
    return ft.grpo_system_prompt if ft.method == "grpo" else None


def evaluate_base(lm, spec, eval_rows, ev: EvalConfig, max_length: int, instruction: str | None = None) -> dict:
    """The base model on the held-out rows; `instruction` as the arms get it (`eval_instruction(ft)`)."""
    from plop_core.evaluate import evaluate_model

    er = evaluate_model(lm.model, lm.tokenizer, spec, eval_rows, ev.metrics, batch_size=ev.batch_size,
                        max_new_tokens=ev.max_new_tokens, ci_level=ev.ci_level, n_bootstrap=ev.n_bootstrap,
                        rel_tol=ev.rel_tol, max_length=max_length, seed=0, instruction=instruction)
    return {"arm": "base", "seed": -1, "types": "", "rank": 0, "n_modules": 0, "trainable_params": 0,
            **er.flat(), "eval_s": er.wall_s, "per_row": {m: r.per_row for m, r in er.metrics.items()}}


# ----------------------------------------------------------------------------- statistics


def _t_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    from scipy import stats

    n = len(values)
    m, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return (m - half, m + half)


def _paired_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p-value; 1.0 when every difference is zero; NaN below 2 pairs."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan")
    d = a - b
    if np.allclose(d, d[0]):
        return 1.0 if np.allclose(d, 0) else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


def summarize(runs: pd.DataFrame, per_row: dict, metrics: list[str], ci_level: float = 0.95,
              reference: str = REFERENCE_ARM) -> pd.DataFrame:
    """Per arm: mean over seeds with an interval (t across seeds with >= 2 seeds, else the metric's own),
    the difference from the reference arm paired by seed (t-test; "n/a" with 1 seed), and a paired t-test
    across eval rows (per-row values averaged over seeds; same rows for every arm)."""
    out = []
    arms = list(dict.fromkeys(runs["arm"]))
    arms = [a for a in arms if a != "base"] + (["base"] if "base" in arms else [])
    ref = runs[runs["arm"] == reference]
    for arm in arms:
        g = runs[runs["arm"] == arm].sort_values("seed")
        rec = {"arm": arm, "types": g["types"].iloc[0], "rank": int(g["rank"].iloc[0]),
               "trainable_params": int(g["trainable_params"].mean()), "n_seeds": len(g) if arm != "base" else 0}
        for m in metrics:
            vals = g[m].to_numpy(float)
            rec[m] = float(vals.mean())
            lo, hi = (_t_interval(vals, ci_level) if len(vals) >= 2
                      else (float(g[f"{m}_low"].iloc[0]), float(g[f"{m}_high"].iloc[0])))
            rec[f"{m}_low"], rec[f"{m}_high"] = lo, hi
            rec[f"{m}_diff"] = rec[f"{m}_p_seeds"] = rec[f"{m}_p_rows"] = float("nan")
            rec[f"{m}_test"] = "n/a (no plop arm)"
            if len(ref) and arm != reference:
                both = g.merge(ref, on="seed", suffixes=("", "_ref")) if arm != "base" else None
                if both is not None and len(both):
                    rec[f"{m}_diff"] = float((both[m] - both[f"{m}_ref"]).mean())
                    rec[f"{m}_p_seeds"] = _paired_p(both[m].to_numpy(), both[f"{m}_ref"].to_numpy())
                    rec[f"{m}_test"] = (f"paired t over {len(both)} seeds" if len(both) >= 2
                                        else "n/a (1 seed)")
                else:
                    rec[f"{m}_diff"] = float(rec[m] - ref[m].mean())
                    rec[f"{m}_test"] = "n/a (base: no seeds)"
                mine = np.mean([per_row[(arm, s)][m] for s in g["seed"]], axis=0)
                theirs = np.mean([per_row[(reference, s)][m] for s in ref["seed"]], axis=0)
                rec[f"{m}_p_rows"] = _paired_p(mine, theirs)
            elif arm == reference:
                rec[f"{m}_diff"], rec[f"{m}_test"] = 0.0, "reference"
        out.append(rec)
    return pd.DataFrame(out)


def _fmt(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def format_summary(summary: pd.DataFrame, metric: str) -> str:
    """The per-arm table as fixed-width text: metric with interval, difference from plop and p-values."""
    head = ["arm", "types", "rank", "params", f"{metric} [{'95% CI'}]", "diff vs plop", "p (seeds)", "p (rows)"]
    rows = []
    for _, r in summary.iterrows():
        rows.append([r["arm"], r["types"] or "-", str(r["rank"]), f"{r['trainable_params']:,}",
                     f"{_fmt(r[metric])} [{_fmt(r[metric + '_low'])}, {_fmt(r[metric + '_high'])}]",
                     "" if r[f"{metric}_test"] == "reference" else f"{r[metric + '_diff']:+.3f}"
                     if math.isfinite(r[metric + "_diff"]) else "n/a",
                     _fmt(r[f"{metric}_p_seeds"]), _fmt(r[f"{metric}_p_rows"])])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ----------------------------------------------------------------------------- the experiment


def _load(model_spec):
    from plop_core.models import LoadedModel, load_model

    if isinstance(model_spec, LoadedModel):
        return model_spec
    return load_model(model_spec if isinstance(model_spec, ModelSpec) else ModelSpec(id=str(model_spec)),
                      progress=False)


def run_experiment(model_spec, task, arms=None, seeds=None, finetune_cfg: FinetuneConfig | None = None,
                   eval_cfg: EvalConfig | None = None, scores=None, out_dir=None, progress: bool = True,
                   sampling: SamplingConfig | None = None, scorer: ScorerConfig | None = None,
                   k: int = 3) -> ExperimentResult:
    """Compare LoRA placements (arms) over seeds at a matched budget on one model and task.

    model_spec: ModelSpec, asset name / path / hub id, or a LoadedModel. task: task name or data file.
    arms: strategies or explicit type lists ('q,v'); default finetune_cfg.arms. seeds: default its seeds.
    scores: precomputed `Scores` of this model (else the model is scored on `sampling` rows when an arm
    needs NFN). Writes runs.parquet, summary.parquet, experiment.json and a PNG under `out_dir`.
    """
    import tempfile

    from tqdm.auto import tqdm

    from plop_core.artifacts import atomic_write_text, write_parquet_atomic
    from plop_core.data import resolve_task, sample_task
    from plop_core.modules import discover_candidates
    from plop_core.placement import STRATEGIES

    ft, ev = finetune_cfg or FinetuneConfig(), eval_cfg or EvalConfig()
    if ft.method == "none":
        raise ValueError("finetune method is 'none'; use method='sft' or 'grpo' to compare arms")
    arms, seeds = list(arms or ft.arms), list(seeds if seeds is not None else ft.seeds)
    if not arms or not seeds:
        raise ValueError("give at least one arm (e.g. plop,attn,mlp,all) and one seed")
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="plop_experiment_"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lm = _load(model_spec)
    source = lm.identity.path or lm.identity.id
    spec = resolve_task(task)
    train_rows, eval_rows = experiment_rows(spec, ft.train_samples, ev.n_samples)
    discovery = scores.discovery if scores is not None else discover_candidates(lm.model)
    need = any(a in STRATEGIES and STRATEGIES[a].needs_scores for a in arms) or (ft.budget_match and
                                                                                  REFERENCE_ARM not in arms)
    if scores is None and need:
        from plop_core.nfn import score_nfn

        sampling, scorer = sampling or SamplingConfig(), scorer or ScorerConfig()
        texts = sample_task(spec, n=sampling.n_samples, seed=sampling.seed, split=sampling.split,
                            allow_smaller=True).texts
        scores = score_nfn(lm.model, lm.tokenizer, texts, batch_size=scorer.batch_size,
                           max_length=sampling.max_length, estimator=scorer.estimator, seed=scorer.seed,
                           n_probe=scorer.n_probe, n_bootstrap=scorer.n_bootstrap, ci_level=scorer.ci_level,
                           include_padding=scorer.include_padding, progress=progress)
        discovery = scores.discovery
    ref_pl = arm_placement(REFERENCE_ARM, scores, discovery, k) if scores is not None else None
    plan = []
    for arm in arms:
        for seed in seeds:
            pl = arm_placement(arm, scores, discovery, k, seed=seed if arm == "random" else 0)
            pls = {arm: pl} if ref_pl is None else {REFERENCE_ARM: ref_pl, arm: pl}
            b = budget_ranks(pls, ft.lora.r, ft.budget_match, REFERENCE_ARM)[arm]
            plan.append((arm, seed, pl, b))
    base = evaluate_base(lm, spec, eval_rows, ev, ft.max_length, instruction=eval_instruction(ft))
    del lm
    train_path = atomic_write_text(out / "train_rows.json", json.dumps(train_rows, default=str))
    eval_path = atomic_write_text(out / "eval_rows.json", json.dumps(eval_rows, default=str))
    results = [base]
    bar = tqdm(plan, desc="arms x seeds", disable=not progress)
    for arm, seed, pl, b in bar:
        bar.set_postfix_str(f"{arm} seed {seed} r={b['rank']}")
        rec = run_arm(str(source), spec.name if spec.name in _registered() else str(task), pl.to_dict(),
                      b["rank"], seed, ft.model_dump(mode="json"), ev.model_dump(mode="json"),
                      str(train_path), str(eval_path), str(out / "runs"), arm=arm)
        rec["target_params"] = b["target_params"]
        results.append(rec)
    per_row = {(r["arm"], r["seed"]): r.pop("per_row") for r in results}
    runs = pd.DataFrame(results)
    summary = summarize(runs, per_row, list(ev.metrics), ev.ci_level)
    meta = {"model": str(source), "task": spec.name, "arms": arms, "seeds": seeds, "method": ft.method,
            "primary_metric": ev.metrics[0], "n_train": len(train_rows), "n_eval": len(eval_rows),
            "reference_params": int(ref_pl.trainable_params(ft.lora.r)) if ref_pl is not None else None,
            "reference_rank": ft.lora.r, "wall_s": time.perf_counter() - t0,
            "finetune": ft.model_dump(mode="json"), "evaluation": ev.model_dump(mode="json")}
    files = {"runs": str(write_parquet_atomic(runs, out / "runs.parquet")),
             "summary": str(write_parquet_atomic(summary, out / "summary.parquet")),
             "experiment": str(atomic_write_text(out / "experiment.json", json.dumps(meta, indent=2, default=str)))}
    try:
        from plop_core.plots import comparison_chart

        m = ev.metrics[0]
        chart = runs.rename(columns={m: "value", f"{m}_low": "ci_low", f"{m}_high": "ci_high"}).assign(metric=m)
        files["chart"] = str(comparison_chart(chart[["arm", "seed", "metric", "value", "ci_low", "ci_high"]],
                                              out / "comparison.png", metric=m,
                                              title=f"{m}: arms at matched budget ({meta['task']}, {ft.method})"))
    except (ImportError, ValueError) as e:  # the picture is a convenience, the tables are the result
        files["chart_error"] = str(e)
    placements = {arm: pl.to_dict() for arm, _, pl, _ in plan}
    return ExperimentResult(runs, summary, placements, meta, files)


def _registered() -> list[str]:
    from plop_core.data import list_tasks

    return list_tasks()
