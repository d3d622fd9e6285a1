"""Study point 4: does a module type's NFN predict where LoRA helps? Spearman of NFN against finetuning gain.

Usage:
    .venv/bin/python benchmarks/study/nfn_gain.py                       # the committed study-single-type sweep
    .venv/bin/python benchmarks/study/nfn_gain.py --results DIR --sweep NAME   # another results folder

Reads the single-type sweep's committed run records and the cell's types Parquet (LoRA on one module type only, ranks matched to one
budget, several seeds; the base model on the same held-out rows) and the same cell's per-type NFN. Gain of
a type = base NLL - the arm's NLL on the held-out rows (positive: LoRA there helps), per seed. PLoP's claim
predicts a negative Spearman rho(NFN, gain): low-NFN types gain most. Reported per (model, task):
  rho        Spearman of the type NFN against the mean gain over seeds
  p_perm     exact two-sided permutation p-value (every ordering of the gains: 7! = 5040)
  ci         percentile interval of rho when each type's seeds are resampled (2000 draws): the training
             noise only; with 3 seeds it is coarse, and NFN's own (tiny) interval is ignored
  top3_gain  whether PLoP's 3 lowest-NFN types are the 3 types with the largest mean gain
And, to say which types the data can tell apart, every pair of types compared on the same held-out rows
(nfn_gain_pairs): per-row NLL averaged over each type's seeds, paired t over the rows, Holm over the 21
pairs of a cell. Training noise across seeds is not in this test (the seed spread is in gain_sd).
Writes docs/study/tables/nfn_gain*.md and docs/study/nfn_gain.png (NFN vs gain, one panel per cell).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr, ttest_rel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/study/nfn_gain.py"


def read_runs(records: list[dict], metric: str = "nll") -> pd.DataFrame:
    """(model, task, arm, seed, value) of every finished run and the base (records: common.read_records)."""
    return pd.DataFrame([dict(model=r["model"], task=r["task"], arm=r["arm"], seed=r["seed"],
                              value=r["metrics"].get(metric)) for r in records])


def gains(runs: pd.DataFrame) -> pd.DataFrame:
    """(model, task, type, seed, gain) with gain = base value - arm value (lower NLL is better)."""
    base = runs[runs["arm"] == "base"].groupby(["model", "task"])["value"].mean().rename("base")
    arms = runs[runs["arm"].isin(common.TYPE_ORDER)].join(base, on=["model", "task"], how="inner")
    arms = arms.assign(type=arms["arm"], gain=arms["base"] - arms["value"])
    return arms[["model", "task", "type", "seed", "value", "base", "gain"]].reset_index(drop=True)


def permutation_p(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided p of Spearman's rho over every ordering of y (7 types: 5040)."""
    observed = abs(spearmanr(x, y).statistic)
    perms = [abs(spearmanr(x, np.asarray(p)).statistic) for p in itertools.permutations(y)]
    return float(np.mean(np.asarray(perms) >= observed - 1e-12))


def seed_bootstrap(nfn: pd.Series, per_seed: pd.DataFrame, n: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile interval of rho when each type's seeds are resampled with replacement."""
    rng = np.random.default_rng(seed)
    types = list(nfn.index)
    by_type = [per_seed.loc[per_seed["type"] == t, "gain"].to_numpy() for t in types]
    draws = []
    for _ in range(n):
        mean = [rng.choice(g, size=len(g)).mean() for g in by_type]
        r = spearmanr(nfn.to_numpy(), mean).statistic
        if np.isfinite(r):
            draws.append(r)
    return tuple(np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])) if draws else (np.nan, np.nan)


def analyse(types: pd.DataFrame, g: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One summary row per (model, task) and the per-type table behind it."""
    rows, per_type = [], []
    for (model, task), cell in g.groupby(["model", "task"]):
        nfn = common.type_series(types, model, task)
        mean = cell.groupby("type")["gain"].agg(["mean", "std", "count"])
        kinds = [t for t in common.TYPE_ORDER if t in nfn.index and t in mean.index]
        if len(kinds) < 3:
            continue
        nfn, mean = nfn[kinds], mean.loc[kinds]
        rho = float(spearmanr(nfn.to_numpy(), mean["mean"].to_numpy()).statistic)
        low, high = (seed_bootstrap(nfn, cell[cell["type"].isin(kinds)]) if mean["count"].min() >= 2
                     else (np.nan, np.nan))  # one seed: no training-noise interval
        plop3, best3 = common.top(nfn), frozenset(mean["mean"].sort_values(ascending=False).index[:3])
        rows.append(dict(model=model, task=task, types=len(kinds), seeds=int(mean["count"].min()),
                         base_nll=float(cell["base"].iloc[0]), rho=rho,
                         p_perm=permutation_p(nfn.to_numpy(), mean["mean"].to_numpy()), ci_low=low, ci_high=high,
                         plop_top3=common.fmt_set(plop3), gain_top3=common.fmt_set(best3),
                         top3_gain=plop3 == best3))
        per_type += [dict(model=model, task=task, type=t, nfn=float(nfn[t]), gain_mean=float(mean.loc[t, "mean"]),
                          gain_sd=float(mean.loc[t, "std"]), seeds=int(mean.loc[t, "count"])) for t in kinds]
    return pd.DataFrame(rows), pd.DataFrame(per_type)


def row_pairs(records: list[dict], types: pd.DataFrame, metric: str = "nll") -> pd.DataFrame:
    """Every pair of types of a cell on the same held-out rows: mean per-row difference (a - b; negative: a's
    NLL is lower), paired t p-value over rows, Holm-adjusted over the cell's pairs."""
    recs = [r for r in records if r["arm"] in common.TYPE_ORDER]
    out = []
    for (model, task), cell in pd.DataFrame(recs).groupby(["model", "task"]) if recs else []:
        nfn = common.type_series(types, model, task)
        rows = {t: np.mean([np.asarray(v[metric], float) for v in g["per_row"]], axis=0)
                for t, g in cell.groupby("arm")}
        seeds = cell.groupby("arm")["seed"].nunique()
        kinds = [t for t in common.TYPE_ORDER if t in rows and t in nfn.index]
        pairs = []
        for a, b in common.pairs(kinds):
            d = rows[a] - rows[b]
            pairs.append(dict(model=model, task=task, a=a, b=b, nfn_a=float(nfn[a]), nfn_b=float(nfn[b]),
                              diff=float(d.mean()), p_rows=float(ttest_rel(rows[a], rows[b]).pvalue),
                              seeds_a=int(seeds[a]), seeds_b=int(seeds[b]), rows=len(d)))
        if pairs:
            block = pd.DataFrame(pairs)
            block.insert(block.columns.get_loc("p_rows") + 1, "p_holm", common.holm(block["p_rows"].to_numpy()))
            out.append(block)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def figure(per_type: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(summary[["model", "task"]].itertuples(index=False, name=None))
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), squeeze=False)
    for ax, (model, task) in zip(axes[0], cells):
        d = per_type[(per_type["model"] == model) & (per_type["task"] == task)]
        s = summary[(summary["model"] == model) & (summary["task"] == task)].iloc[0]
        ax.errorbar(d["nfn"], d["gain_mean"], yerr=d["gain_sd"], fmt="o", capsize=3)
        for r in d.itertuples():
            ax.annotate(r.type, (r.nfn, r.gain_mean), textcoords="offset points", xytext=(5, 4))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="type NFN (mean over layers)", ylabel="NLL gain over base (mean +- sd over seeds)",
               title=f"{model} x {task}\nSpearman {s.rho:+.2f} (perm. p={s.p_perm:.3f})")
    common.save_figure(fig, path)


def main(argv=None) -> None:
    args = common.sweep_args(__doc__, "study-single-type", "nfn_gain.png", argv)
    records = common.read_records(args.sweep)  # read once: the gains and the row-paired table both use them
    runs, types = read_runs(records), common.read_table(args.sweep, "types")
    if runs.empty or types.empty:
        common.write_table("nfn_gain", pd.DataFrame(), COMMAND)
        common.write_table("nfn_gain_types", pd.DataFrame(), COMMAND)
        common.write_table("nfn_gain_pairs", pd.DataFrame(), COMMAND)
        return
    summary, per_type = analyse(types, gains(runs))
    note = ("Gain = base NLL - arm NLL on the held-out rows (positive: LoRA on that type helps); PLoP predicts "
            "rho < 0. p_perm: exact permutation test over the 7 types; ci: seeds resampled per type.")
    common.write_table("nfn_gain", summary, COMMAND, note)
    common.write_table("nfn_gain_types", per_type, COMMAND)
    common.write_table("nfn_gain_pairs", row_pairs(records, types), COMMAND,
                       "diff = mean over held-out rows of NLL(a) - NLL(b), per-row NLL averaged over each type's seeds "
                       "(negative: LoRA on a is better); p_rows: paired t over rows; p_holm: Holm over the cell's pairs.")
    if len(summary):
        figure(per_type, summary, args.figure)


if __name__ == "__main__":
    main()
