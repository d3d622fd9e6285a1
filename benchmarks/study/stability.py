"""Study point 2: stability of PLoP's type order against the sample size, the maximum length and the estimator.

Usage (repo root, after any of the sweeps study-stability-n, study-stability-n-large, study-length-*,
study-estimator-*; missing ones are skipped):
    .venv/bin/python benchmarks/study/stability.py
Writes docs/study/tables/stability_n.md, stability_length.md, estimators.md and the figures
docs/study/stability_n.png, stability_length.png, estimators.png.

Sample size: each cell of study-stability-n* is gsm8k scored on n sequences drawn with sample seed s
(task label gsm8k-n<n>-s<s>). The reference order of a model is its study-nfn-maps gsm8k cell (the same
sampler at n=128, seed 0, i.e. the rows of gsm8k-n128-s0). Per n: Kendall tau to the reference (mean,
min over seeds), the share of seeds whose top-3 equals the reference top-3, and the mean tau between
seeds, and the seed spread: the largest over types of (max - min over seeds) / mean of a type's NFN.
"Stable" = every seed's top-3 equals the reference's and the minimum tau >= 0.9 (a swap of
two types at most among the 21 pairs gives 0.905).
Length: MATH at max_length 64..1024, reference = the longest length run for the model.
Estimators: probe, reference (the authors', per-token Gaussian vectors) and analytic (||W||_F/sqrt(d_in))
on the same gsm8k sample; module-level NFN differences and type-order agreement.
"""

from __future__ import annotations

import json
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from common import (
    FIGS,
    RESULTS,
    fmt_set,
    ordered_models,
    pairs,
    ranking,
    read_table,
    tau,
    top,
    type_series,
    write_table,
)

CMD = ".venv/bin/python benchmarks/study/stability.py"
LENGTHS = (64, 128, 256, 512, 1024)
ESTIMATORS = ("probe", "reference", "analytic")


def sample_size_cells() -> tuple[dict, dict]:
    """cells[model][n][seed] = the cell's type -> NFN, and refs[model] = the study-nfn-maps gsm8k order
    (the same sampler at n=128, seed 0), for the models with both."""
    parts = [read_table(s, "types") for s in ("study-stability-n", "study-stability-n-large")]
    parts = [p for p in parts if not p.empty]
    maps = read_table("study-nfn-maps", "types")
    if not parts or maps.empty:
        return {}, {}
    df = pd.concat(parts, ignore_index=True)
    cells, refs = {}, {}
    for m in ordered_models(df["model"]):
        if "gsm8k" not in set(maps[maps["model"] == m]["task"]):
            continue
        refs[m] = type_series(maps, m, "gsm8k")
        for t in set(df[df["model"] == m]["task"]):
            n, seed = map(int, re.fullmatch(r"gsm8k-n(\d+)-s(\d+)", t).groups())
            cells.setdefault(m, {}).setdefault(n, {})[seed] = type_series(df, m, t)
    return cells, refs


def sample_size(cells: dict, refs: dict) -> pd.DataFrame:
    rows = []
    for m, by_n in cells.items():
        ref = refs[m]
        for n in sorted(by_n):
            by_seed = by_n[n]
            taus = [tau(x, ref) for x in by_seed.values()]
            between = [tau(by_seed[a], by_seed[b]) for a, b in pairs(sorted(by_seed))]
            agree = [top(x) == top(ref) for x in by_seed.values()]
            nfn = pd.DataFrame(by_seed)  # types x seeds
            spread = ((nfn.max(axis=1) - nfn.min(axis=1)) / nfn.mean(axis=1)).max()
            rows.append({"model": m, "n": n, "seeds": len(by_seed), "mean tau vs ref": float(np.mean(taus)),
                         "min tau vs ref": float(np.min(taus)), "top-3 = ref (share)": float(np.mean(agree)),
                         "mean tau between seeds": float(np.mean(between)) if between else float("nan"),
                         "seed spread % (worst type)": float(100 * spread),
                         "top-3 sets seen": " / ".join(sorted({fmt_set(top(x)) for x in by_seed.values()})),
                         "stable": bool(all(agree) and min(taus) >= 0.9)})
    return pd.DataFrame(rows)


def truncated_share(sweep: str) -> dict[str, float]:
    out = {}
    for rec in (RESULTS / sweep / "cells").glob("*/*/*/record.json"):
        r = json.loads(rec.read_text())
        if r.get("code_version") == "study-1":
            out[r["model_name"]] = r["meta"].get("truncated_share")
    return out


def length_tables() -> dict[int, pd.DataFrame]:
    """{max_length: the study-length-<L> types table} for the length sweeps that have run."""
    tables = {L: read_table(f"study-length-{L}", "types") for L in LENGTHS}
    return {L: t for L, t in tables.items() if not t.empty}


def length(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    if not tables:
        return pd.DataFrame()
    rows = []
    models = ordered_models(pd.concat(tables.values())["model"])
    for m in models:
        have = [L for L in LENGTHS if L in tables and m in set(tables[L]["model"])]
        if not have:
            continue
        ref_len = max(have)
        ref = type_series(tables[ref_len], m, "math")
        for L in have:
            s = type_series(tables[L], m, "math")
            rows.append({"model": m, "max_length": L, "reference length": ref_len,
                         "truncated share": truncated_share(f"study-length-{L}").get(m), "tau vs ref": tau(s, ref),
                         "top-3": fmt_set(top(s)), "top-3 = ref": top(s) == top(ref),
                         "order": " < ".join(ranking(s))})
    return pd.DataFrame(rows)


def estimators() -> tuple[pd.DataFrame, pd.DataFrame]:
    types = {e: read_table(f"study-estimator-{e}", "types") for e in ESTIMATORS}
    mods = {e: read_table(f"study-estimator-{e}", "modules") for e in ESTIMATORS}
    types = {e: t for e, t in types.items() if not t.empty}
    if len(types) < 2:
        return pd.DataFrame(), pd.DataFrame()
    rows, merged = [], []
    models = ordered_models(pd.concat(types.values())["model"])
    for m in models:
        have = [e for e in types if m in set(types[e]["model"])]
        for e in have:
            s = type_series(types[e], m, "gsm8k")
            rows.append({"model": m, "estimator": e, "top-3": fmt_set(top(s)), "order": " < ".join(ranking(s)),
                         **{f"tau vs {o}": tau(s, type_series(types[o], m, "gsm8k")) for o in have if o != e}})
        if "probe" in have:
            p = mods["probe"][mods["probe"]["model"] == m].set_index("module")
            for e in have:
                if e == "probe":
                    continue
                o = mods[e][mods[e]["model"] == m].set_index("module")
                d = pd.DataFrame({"model": m, "other": e, "type": p["type"], "probe": p["nfn"],
                                  "value": o["nfn"].reindex(p.index)})
                merged.append(d)
    return pd.DataFrame(rows), (pd.concat(merged) if merged else pd.DataFrame())


def analytic_from_weights() -> pd.DataFrame:
    """probe vs analytic without another forward pass: the analytic baseline ||W||_F/sqrt(d_in) is
    `rms_gain` in weights-spectral/spectral.parquet (same fp32 weights), so NFN_analytic = feature_norm /
    rms_gain for every module of every study-nfn-maps cell."""
    path = RESULTS / "weights-spectral" / "spectral.parquet"
    mods = read_table("study-nfn-maps", "modules")
    if mods.empty or not path.exists():
        return pd.DataFrame()
    w = pd.read_parquet(path)[["model", "layer", "type", "rms_gain"]]
    d = mods.merge(w, on=["model", "layer", "type"], how="inner")
    d["nfn_analytic"] = d["feature_norm"] / d["rms_gain"]
    d["gap"] = d["rms_gain"] / d["baseline_norm"] - 1  # Jensen: analytic >= probe, up to probe noise
    rows = []
    for (m, t), g in d.groupby(["model", "task"]):
        probe = g.groupby("type")["nfn"].mean()
        ana = g.groupby("type")["nfn_analytic"].mean()
        rows.append({"model": m, "task": t, "modules": len(g), "median gap": float(g["gap"].median()),
                     "max gap": float(g["gap"].max()), "min gap": float(g["gap"].min()),
                     "tau probe vs analytic": tau(probe, ana), "same top-3": top(probe) == top(ana),
                     "analytic top-3": fmt_set(top(ana))})
    return pd.DataFrame(rows)


def fig_n(cells: dict, refs: dict, df: pd.DataFrame) -> None:
    """Per model, each type's NFN against n: the mean over sample seeds and the band from the lowest to the
    highest seed (crossing bands are where seeds can disagree on the order); types labelled at the right."""
    if df.empty:
        return
    fig, axes = plt.subplots(1, len(cells), figsize=(4.6 * len(cells), 4.2), squeeze=False)
    colors: dict[str, str] = {}  # one colour per type across the panels
    for ax, (m, by_n) in zip(axes[0], cells.items(), strict=True):
        ns = sorted(by_n)
        for t in ranking(refs[m]):
            per_n = [[seeds[t] for seeds in by_n[n].values()] for n in ns]  # this type's NFN in each seed
            mean = [float(np.mean(v)) for v in per_n]
            c = colors.setdefault(t, f"C{len(colors)}")
            ax.plot(ns, mean, "o-", ms=3, color=c)
            ax.fill_between(ns, [min(v) for v in per_n], [max(v) for v in per_n], color=c, alpha=0.25)
            ax.annotate(t, (ns[-1], mean[-1]), xytext=(5, 0), textcoords="offset points", va="center", fontsize=8)
        scored = [s for seeds in by_n.values() for s in seeds.values()]
        ok = sum(top(s) == top(refs[m]) for s in scored)
        min_tau = df[df["model"] == m]["min tau vs ref"].min()
        ax.set_title(f"{m}\nreference top-3 in {ok} of {len(scored)} cells; min tau {min_tau:.2f}", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequences scored (gsm8k, <= 256 tokens)")
        ax.set_ylabel("type NFN (mean over seeds; band: min-max)")
    fig.suptitle("Type NFN against the number of sequences (5 sample seeds per n)")
    fig.tight_layout()
    fig.savefig(FIGS / "stability_n.png", dpi=110)


def fig_length(tables: dict[int, pd.DataFrame], df: pd.DataFrame) -> None:
    """Per model, each type's NFN against max_length (a crossing line is a change of order), tau in the title."""
    if df.empty:
        return
    models = ordered_models(df["model"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4), squeeze=False)
    colors: dict[str, str] = {}  # one colour per type across the panels
    for ax, m in zip(axes[0], models, strict=True):
        have = sorted(L for L in tables if m in set(tables[L]["model"]))
        per_len = pd.DataFrame({L: type_series(tables[L], m, "math") for L in have})
        for t in ranking(per_len[max(have)]):
            ax.plot(have, per_len.loc[t], "o-", ms=3, color=colors.setdefault(t, f"C{len(colors)}"))
            ax.annotate(t, (have[-1], per_len.loc[t, have[-1]]), xytext=(4, 0), textcoords="offset points",
                        va="center", fontsize=8)
        d = df[df["model"] == m].sort_values("max_length")
        ax.set_title(f"{m}\ntau to {max(have)}: " + ", ".join(f"{t:.2f}" for t in d["tau vs ref"]), fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("max_length (MATH, 128 sequences)")
        ax.set_ylabel("type NFN (mean over layers)")
    moved = df.loc[~df["top-3 = ref"].astype(bool), ["model", "max_length"]]
    fig.suptitle("Type NFN against the maximum length: " + (
        "the top-3 is the same at every length on every model" if moved.empty else
        "top-3 differs from the longest length's at " + ", ".join(f"{r.model} {r.max_length}" for r in moved.itertuples())))
    fig.tight_layout()
    fig.savefig(FIGS / "stability_length.png", dpi=110)


def fig_estimators(merged: pd.DataFrame) -> None:
    if merged.empty:
        return
    others = sorted(set(merged["other"]))
    fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4.4), squeeze=False)
    for ax, e in zip(axes[0], others, strict=True):
        for m in ordered_models(merged["model"]):
            d = merged[(merged["model"] == m) & (merged["other"] == e)]
            ax.scatter(d["probe"], d["value"], s=6, label=m)
        lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("module NFN, probe (512 unit vectors)")
        ax.set_ylabel(f"module NFN, {e}")
        ax.legend(fontsize=8)
    fig.suptitle("The three rho(W) estimators on the same gsm8k sample (every hooked module)")
    fig.tight_layout()
    fig.savefig(FIGS / "estimators.png", dpi=110)


def main() -> None:
    cells, refs = sample_size_cells()
    n = sample_size(cells, refs)
    write_table("stability_n", n, CMD, "Type order vs the number of sequences; reference = study-nfn-maps gsm8k "
                "(128 sequences, sample seed 0). stable = all seeds give the reference top-3 and min tau >= 0.9; "
                "seed spread = the largest over types of (max - min over seeds) / mean NFN.")
    fig_n(cells, refs, n)
    tables = length_tables()
    L = length(tables)
    write_table("stability_length", L, CMD, "Type order vs max_length on MATH (128 sequences).")
    fig_length(tables, L)
    est, merged = estimators()
    if not merged.empty:
        rel = (merged["value"] / merged["probe"] - 1).abs()
        summ = merged.assign(rel=rel).groupby(["model", "other"])["rel"].agg(["median", "max"]).reset_index()
        note = "Module-level |NFN_other / NFN_probe - 1|: " + "; ".join(
            f"{r.model} {r.other}: median {r['median']:.4f}, max {r['max']:.4f}" for _, r in summ.iterrows())
    else:
        note = ""
    write_table("estimators", est, CMD, "Type order under the three estimators (gsm8k, 32 sequences). " + note)
    fig_estimators(merged)
    write_table("analytic_vs_probe", analytic_from_weights(), CMD,
                "probe vs analytic on every study-nfn-maps cell, no extra forward pass: gap = ||W||_F/sqrt(d_in) / "
                "rho_probe(W) - 1 per module (Jensen: >= 0 up to the probe's Monte Carlo error).")


if __name__ == "__main__":
    main()
