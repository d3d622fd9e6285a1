"""Study point 3: does the task data carry information beyond the weights?

Usage (repo root, after the sweeps study-nfn-maps and study-random-tokens and
`benchmarks/study/weights_spectral.py`):
    .venv/bin/python benchmarks/study/data_matters.py
compares, per model, the type order PLoP gets from task text (study-nfn-maps) with the order from random
tokens (study-random-tokens) and with weights-only rules (docs/study/results/weights-spectral/spectral.parquet,
per-type means over layers). Writes
- docs/study/tables/data_matters.md   per model and source: order, top-3, Kendall tau and top-3 agreement
                                      with each task's NFN order
- docs/study/tables/task_vs_random.md per (model, task): does the order or the top-3 differ from random tokens?
- docs/study/data_matters.png         type NFN on random tokens (x) vs on each task (y), per model
- docs/study/tables/modules_vs_random.md, docs/study/data_matters_modules.png: the same at module level
  (every layer's every module: NFN on the task vs on random tokens)
- docs/study/weights_vs_nfn.png       weights-only anisotropy sigma_1 sqrt(d_in)/||W||_F vs type NFN
- docs/study/tables/question_only.md  (after study-question-only) gsm8k question + answer vs question only
Weights-only rules are oriented so that the FIRST types are the ones LoRA would get (like PLoP's lowest NFN):
anisotropy ascending (pre-registered: it bounds the NFN any input can reach), stable rank and effective rank
descending, Spectrum SNR ascending.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from common import (
    FIGS,
    RESULTS,
    TYPE_ORDER,
    fmt_set,
    ordered_models,
    ranking,
    read_table,
    tau,
    top,
    type_series,
    write_table,
)

CMD = ".venv/bin/python benchmarks/study/data_matters.py"
RANDOM = "random-tokens"
# statistic -> sign such that ascending (sign * value) lists the types LoRA would get first
RULES = {"anisotropy": 1, "stable_rank": -1, "effective_rank": -1, "spectrum_snr": 1}


def weight_rules() -> pd.DataFrame:
    path = RESULTS / "weights-spectral" / "spectral.parquet"
    if not path.exists():
        return pd.DataFrame()
    return pd.read_parquet(path).groupby(["model", "type"])[list(RULES)].mean().reset_index()


def sources(model: str, maps: pd.DataFrame, rand: pd.DataFrame, w: pd.DataFrame) -> dict[str, pd.Series]:
    out = {f"task: {t}": type_series(maps, model, t) for t in sorted(set(maps[maps["model"] == model]["task"]))}
    if not rand.empty and model in set(rand["model"]):
        out["random tokens"] = type_series(rand, model, RANDOM)
    if not w.empty and model in set(w["model"]):
        d = w[w["model"] == model].set_index("type")
        for stat, sign in RULES.items():
            out[f"weights: {stat}"] = sign * d[stat].replace(np.inf, 1e9)
    return out


def table(maps, rand, w) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, vs_random = [], []
    for m in ordered_models(maps["model"]):
        src = sources(m, maps, rand, w)
        tasks = {k: v for k, v in src.items() if k.startswith("task: ")}
        for name, s in src.items():
            taus = [tau(s, ts) for tn, ts in tasks.items() if tn != name]
            rows.append({"model": m, "source": name, "order (LoRA first)": " < ".join(ranking(s)),
                         "top-3": fmt_set(top(s)),
                         "mean tau vs tasks": float(np.mean(taus)) if taus else float("nan"),
                         "top-3 = task's": f"{sum(top(s) == top(ts) for tn, ts in tasks.items() if tn != name)}"
                                           f"/{len([tn for tn in tasks if tn != name])}"})
        if "random tokens" in src:
            r = src["random tokens"]
            for tn, ts in tasks.items():
                vs_random.append({"model": m, "task": tn.removeprefix("task: "), "kendall_tau": tau(ts, r),
                                  "same order": ranking(ts) == ranking(r), "same top-3": top(ts) == top(r),
                                  "task top-3": fmt_set(top(ts)), "random top-3": fmt_set(top(r))})
    return pd.DataFrame(rows), pd.DataFrame(vs_random)


def fig_random(maps, rand) -> None:
    models = [m for m in ordered_models(maps["model"]) if not rand.empty and m in set(rand["model"])]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models), 4.4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        r = type_series(rand, m, RANDOM).reindex(TYPE_ORDER)
        for t in sorted(set(maps[maps["model"] == m]["task"])):
            s = type_series(maps, m, t).reindex(TYPE_ORDER)
            ax.scatter(r, s, s=18, label=t)
        for ty in TYPE_ORDER:
            ax.annotate(ty, (r[ty], type_series(maps, m, sorted(set(maps[maps["model"] == m]["task"]))[0])[ty]),
                        fontsize=8, xytext=(3, 3), textcoords="offset points")
        lim = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.set_title(m)
        ax.set_xlabel("type NFN on random tokens")
        ax.set_ylabel("type NFN on task text")
        ax.legend(fontsize=7)
    fig.suptitle("Task text vs random tokens: the same order would put every type on one monotone curve")
    fig.tight_layout()
    fig.savefig(FIGS / "data_matters.png", dpi=110)


def modules_vs_random() -> pd.DataFrame:
    """Module-level agreement: correlation of log NFN across all modules, share of modules within 10 %."""
    mods, rmods = read_table("study-nfn-maps", "modules"), read_table("study-random-tokens", "modules")
    if mods.empty or rmods.empty:
        return pd.DataFrame()
    r = rmods[["model", "module", "nfn"]].rename(columns={"nfn": "nfn_random"})
    d = mods.merge(r, on=["model", "module"])
    rows = []
    for (m, t), g in d.groupby(["model", "task"]):
        ratio = g["nfn"] / g["nfn_random"]
        rows.append({"model": m, "task": t, "modules": len(g),
                     "pearson log NFN": float(np.corrcoef(np.log(g["nfn"]), np.log(g["nfn_random"]))[0, 1]),
                     "median |task/random - 1|": float((ratio - 1).abs().median()),
                     "share within 10 %": float(((ratio - 1).abs() <= 0.10).mean()),
                     "max |task/random - 1|": float((ratio - 1).abs().max())})
    fig, axes = plt.subplots(1, len(set(d["model"])), figsize=(4.6 * len(set(d["model"])), 4.3), squeeze=False)
    for ax, m in zip(axes[0], ordered_models(d["model"]), strict=True):
        g = d[d["model"] == m]
        for ty in TYPE_ORDER:
            h = g[g["type"] == ty]
            ax.scatter(h["nfn_random"], h["nfn"], s=7, label=ty)
        lim = [g[["nfn", "nfn_random"]].min().min() * 0.9, g[["nfn", "nfn_random"]].max().max() * 1.1]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{m}: every module, all tasks run")
        ax.set_xlabel("module NFN on random tokens")
        ax.set_ylabel("module NFN on task text")
        ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    fig.savefig(FIGS / "data_matters_modules.png", dpi=110)
    return pd.DataFrame(rows)


def fig_weights(maps, w) -> None:
    if w.empty:
        return
    fig, ax = plt.subplots(figsize=(6, 4.6))
    for m in ordered_models(maps["model"]):
        if m not in set(w["model"]):
            continue
        d = w[w["model"] == m].set_index("type")
        t = "gsm8k" if "gsm8k" in set(maps[maps["model"] == m]["task"]) else sorted(set(maps["task"]))[0]
        s = type_series(maps, m, t)
        ax.scatter(d.loc[s.index, "anisotropy"], s, label=f"{m} ({t})")
        for ty in s.index:
            ax.annotate(ty, (d.at[ty, "anisotropy"], s[ty]), fontsize=8, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("weights only: anisotropy sigma_1 sqrt(d_in) / ||W||_F (mean over layers)")
    ax.set_ylabel("type NFN on task text")
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    ax.set_title("Does a weights-only statistic order the types like NFN?")
    fig.tight_layout()
    fig.savefig(FIGS / "weights_vs_nfn.png", dpi=110)


QUESTIONS = "gsm8k-questions-n128-s0"  # study-question-only's task label (the data file's stem)


def question_only(maps: pd.DataFrame) -> pd.DataFrame:
    """Point 5: per model, gsm8k scored on question + worked answer (study-nfn-maps) vs the same rows'
    questions alone (study-question-only): order, top-3 and the largest per-type NFN change."""
    q = read_table("study-question-only", "types")
    rows = []
    for m in ordered_models(maps["model"]):
        if q.empty or m not in set(q["model"]) or "gsm8k" not in set(maps[maps["model"] == m]["task"]):
            continue
        full, only = type_series(maps, m, "gsm8k"), type_series(q, m, QUESTIONS)
        rel = (only / full - 1).abs()
        rows.append({"model": m, "kendall_tau": tau(full, only), "same order": ranking(full) == ranking(only),
                     "same top-3": top(full) == top(only), "q+a top-3": fmt_set(top(full)),
                     "question-only top-3": fmt_set(top(only)), "max |NFN ratio - 1|": float(rel.max()),
                     "type of max": str(rel.idxmax())})
    return pd.DataFrame(rows)


def main() -> None:
    maps, rand, w = read_table("study-nfn-maps", "types"), read_table("study-random-tokens", "types"), weight_rules()
    if maps.empty:
        raise SystemExit("no results under docs/study/results/study-nfn-maps yet: run the sweep first")
    t, vr = table(maps, rand, w)
    write_table("data_matters", t, CMD, "Order of the 7 types from each source, LoRA-first (PLoP: lowest NFN first); "
                "tau and top-3 agreement against each task-text cell of the same model.")
    write_table("task_vs_random", vr, CMD, "Each task's NFN order against the same model's order on random tokens.")
    fig_random(maps, rand)
    write_table("modules_vs_random", modules_vs_random(), CMD,
                "Module level (each layer's q..down): NFN on the task text vs on random tokens, same model.")
    fig_weights(maps, w)
    qo = question_only(maps)
    if not qo.empty:
        write_table("question_only", qo, CMD, "gsm8k: NFN type order from question + worked answer (study-nfn-maps) "
                    "vs the same 128 rows' questions alone (study-question-only).")


if __name__ == "__main__":
    main()
