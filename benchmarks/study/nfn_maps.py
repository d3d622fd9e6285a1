"""Study point 1: NFN maps, and whether PLoP's placement depends on the model, the task, or both.

Usage (repo root, after `plop sweep deploy/sweeps/study-nfn-maps.yaml --serial`):
    .venv/bin/python benchmarks/study/nfn_maps.py
reads docs/study/results/study-nfn-maps/{types,modules,placements}/**/*.parquet and writes
- docs/study/nfn_types.png      per-type NFN with 95% bootstrap intervals, one panel per model, one colour per task
- docs/study/nfn_heatmaps.png   layer x type maps (log2 NFN, 0 = random baseline), models x tasks
- docs/study/tables/nfn_types.md      per cell: type NFN [interval], order, plop top-3, selection stability
- docs/study/tables/dependence.md     Kendall tau of the type order between tasks (same model) and between
                                      models (same task), and how many top-3 sets agree
Works on a partial sweep (cells not yet run are simply absent).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from common import (
    FIGS,
    TYPE_ORDER,
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

SWEEP = "study-nfn-maps"
CMD = ".venv/bin/python benchmarks/study/nfn_maps.py"
TASK_ORDER = ["gsm8k", "mbpp", "mmlu", "rte"]


def cells(types: pd.DataFrame) -> list[tuple[str, str]]:
    have = set(zip(types["model"], types["task"], strict=True))
    tasks = [t for t in TASK_ORDER if t in set(types["task"])] + sorted(set(types["task"]) - set(TASK_ORDER))
    return [(m, t) for m in ordered_models(types["model"]) for t in tasks if (m, t) in have]


def table_types(types: pd.DataFrame, placements: pd.DataFrame, modules: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for m, t in cells(types):
        d = types[(types["model"] == m) & (types["task"] == t)].set_index("type")
        pl = placements[(placements["model"] == m) & (placements["task"] == t) & (placements["strategy"] == "plop")]
        row = {"model": m, "task": t}
        for ty in TYPE_ORDER:
            if ty in d.index:
                row[ty] = f"{d.at[ty, 'nfn']:.3f} [{d.at[ty, 'nfn_ci_low']:.3f}, {d.at[ty, 'nfn_ci_high']:.3f}]"
        s = d["nfn"]
        row["order (low to high)"] = " < ".join(ranking(s))
        row["plop top-3"] = fmt_set(top(s))
        row["stability"] = f"{pl['stability'].iloc[0]:.2f}" if len(pl) else ""
        med = modules[(modules["model"] == m) & (modules["task"] == t)].groupby("type")["nfn"].median()
        row["top-3 by median over layers"] = fmt_set(top(med))
        rows.append(row)
    return pd.DataFrame(rows)


def table_dependence(types: pd.DataFrame) -> pd.DataFrame:
    cs = cells(types)
    rows = []
    for m in ordered_models(types["model"]):
        tasks = [t for mm, t in cs if mm == m]
        for a, b in pairs(tasks):
            sa, sb = type_series(types, m, a), type_series(types, m, b)
            rows.append({"comparison": "same model, two tasks", "model": m, "tasks": f"{a} vs {b}",
                         "kendall_tau": tau(sa, sb), "same order": ranking(sa) == ranking(sb),
                         "same top-3": top(sa) == top(sb)})
    for t in sorted({t for _, t in cs}):
        models = [m for m, tt in cs if tt == t]
        for a, b in pairs(models):
            sa, sb = type_series(types, a, t), type_series(types, b, t)
            rows.append({"comparison": "same task, two models", "model": f"{a} vs {b}", "tasks": t,
                         "kendall_tau": tau(sa, sb), "same order": ranking(sa) == ranking(sb),
                         "same top-3": top(sa) == top(sb)})
    return pd.DataFrame(rows)


def fig_types(types: pd.DataFrame) -> None:
    models = ordered_models(types["model"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), squeeze=False, sharey=True)
    tasks = sorted(set(types["task"]), key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else 99)
    x = np.arange(len(TYPE_ORDER))
    for ax, m in zip(axes[0], models, strict=True):
        for j, t in enumerate(tasks):
            d = types[(types["model"] == m) & (types["task"] == t)].set_index("type").reindex(TYPE_ORDER)
            if d["nfn"].isna().all():
                continue
            off = (j - (len(tasks) - 1) / 2) * 0.15
            err = np.vstack([d["nfn"] - d["nfn_ci_low"], d["nfn_ci_high"] - d["nfn"]])
            line = ax.errorbar(x + off, d["nfn"], yerr=err, fmt="o", ms=4, capsize=2, label=t)
            ax.errorbar(x + off, d["nfn"], yerr=d["layer_std"], fmt="none", lw=4, alpha=0.2,
                        color=line[0].get_color())
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, TYPE_ORDER)
        ax.set_title(m)
        ax.set_xlabel("module type")
    axes[0][0].set_ylabel("type NFN (mean over layers)\n95% bootstrap CI (thin, tiny); +-1 sd over layers (wide)")
    axes[0][-1].legend(title="task", fontsize=8)
    fig.suptitle("PLoP NFN per module type (128 sequences, <= 256 tokens, probe); LoRA goes to the lowest 3")
    fig.tight_layout()
    fig.savefig(FIGS / "nfn_types.png", dpi=110)


def fig_heatmaps(modules: pd.DataFrame, types: pd.DataFrame) -> None:
    cs = cells(types)
    models = ordered_models(types["model"])
    tasks = sorted({t for _, t in cs}, key=lambda t: TASK_ORDER.index(t) if t in TASK_ORDER else 99)
    fig, axes = plt.subplots(len(models), len(tasks), figsize=(2.6 * len(tasks) + 1, 3.2 * len(models)),
                             squeeze=False)
    im = None
    for i, m in enumerate(models):
        for j, t in enumerate(tasks):
            ax = axes[i][j]
            d = modules[(modules["model"] == m) & (modules["task"] == t)]
            if d.empty:
                ax.axis("off")
                continue
            grid = d.pivot_table(index="layer", columns="type", values="nfn").reindex(columns=TYPE_ORDER)
            im = ax.imshow(np.log2(grid.values), aspect="auto", cmap="RdBu_r", vmin=-1.5, vmax=1.5,
                           interpolation="nearest")
            ax.set_xticks(range(len(TYPE_ORDER)), TYPE_ORDER, fontsize=7)
            ax.set_title(f"{m} / {t}", fontsize=8)
            if j == 0:
                ax.set_ylabel("layer")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="log2 NFN (0: like random directions)")
    fig.savefig(FIGS / "nfn_heatmaps.png", dpi=100)


def main() -> None:
    types, modules = read_table(SWEEP, "types"), read_table(SWEEP, "modules")
    placements = read_table(SWEEP, "placements")
    if types.empty:
        raise SystemExit(f"no results under docs/study/results/{SWEEP} yet: run the sweep first")
    write_table("nfn_types", table_types(types, placements, modules), CMD,
                "Per-type NFN [95% bootstrap interval over sequences and probe baselines]; stability = share of "
                "1000 bootstrap resamples that pick the same top-3; the last column ranks types by the median "
                "over layers instead of the mean (robustness to a few extreme layers).")
    write_table("dependence", table_dependence(types), CMD,
                "Kendall tau-b of the 7 type NFNs between two cells (1 = same order).")
    fig_types(types)
    fig_heatmaps(modules, types)


if __name__ == "__main__":
    main()
