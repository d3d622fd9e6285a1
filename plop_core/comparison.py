"""Comparing finetuning arms: per-arm mean with an interval, paired differences to the plop arm, p-values.

Why its own module: these statistics are what a reader of `plop compare` or a sweep's experiment table
trusts or not, so they live in one place, are tested against scipy directly, and every runner (serial,
Prefect + Ray) calls the same `summarize`. Rules: an interval is a t-interval across training seeds when
there are >= 2 seeds, else the metric's own interval (bootstrap/Wilson over held-out rows); the
difference to the reference arm is paired by seed (t-test) and, separately, by held-out row.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from plop_core.arms import REFERENCE_ARM


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
        rec = {"arm": arm, "types": " / ".join(dict.fromkeys(g["types"])),  # random: one set per seed
               "rank": int(g["rank"].iloc[0]),
               "trainable_params": int(g["trainable_params"].mean()), "n_seeds": len(g) if arm != "base" else 0}
        for m in metrics:
            vals = g[m].to_numpy(float)
            rec[m] = float(vals.mean())
            lo, hi = (_t_interval(vals, ci_level) if len(vals) >= 2
                      else (float(g[f"{m}_low"].iloc[0]), float(g[f"{m}_high"].iloc[0])))
            rec[f"{m}_low"], rec[f"{m}_high"] = lo, hi
            rec[f"{m}_diff"] = rec[f"{m}_p_seeds"] = rec[f"{m}_p_rows"] = float("nan")
            rec[f"{m}_test"] = f"n/a (no {reference} arm)"
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


def _fmt(v, digits=3, sign: bool = False) -> str:
    """A number for the table; None/NaN (a summary read back from JSON has None) -> "n/a"."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def format_summary(summary: pd.DataFrame, metric: str, reference: str = REFERENCE_ARM) -> str:
    """The per-arm table as fixed-width text: metric with interval, difference from the reference arm (the
    one `summarize` was given) and p-values."""
    head = ["arm", "types", "rank", "params", f"{metric} [{'95% CI'}]", f"diff vs {reference}", "p (seeds)",
            "p (rows)"]
    rows = []
    for _, r in summary.iterrows():
        rows.append([r["arm"], r["types"] or "-", str(r["rank"]), f"{r['trainable_params']:,}",
                     f"{_fmt(r[metric])} [{_fmt(r[metric + '_low'])}, {_fmt(r[metric + '_high'])}]",
                     "" if r[f"{metric}_test"] == "reference" else _fmt(r[metric + "_diff"], sign=True),
                     _fmt(r[f"{metric}_p_seeds"]), _fmt(r[f"{metric}_p_rows"])])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])
