"""PNG pictures of results: the NFN map of one cell, and a comparison of finetuning arms.

Why: people look at results in the MLflow UI and in folders; a layer x module-type heatmap shows at
a glance which types are aligned (NFN > 1) and how that varies with depth, and a bar chart with
intervals shows whether a placement's advantage is larger than its noise. matplotlib's Agg backend
only (no display needed); files are written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plop_core.atomic import atomic_path
from plop_core.module_types import TYPE_ORDER


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    finally:
        _pyplot().close(fig)
    return path


def _type_order(types) -> list[str]:
    known = [t for t in TYPE_ORDER if t in set(types)]
    return known + sorted(set(types) - set(known))


def nfn_matrix(modules):
    """(layers, types, matrix) from a per-module NFN table; a cell averages modules of one (layer, type)."""
    grid = modules.groupby(["layer", "type"])["nfn"].mean().unstack("type")
    types = _type_order(grid.columns)
    grid = grid.reindex(columns=types).sort_index()
    return list(grid.index), types, grid.to_numpy(dtype=float)


def nfn_interval_matrix(modules):
    """(layers, types, low, high): per-cell interval bounds (sequences and the baseline's Monte Carlo error,
    see `plop_core.stats.bootstrap_modules`) in the layout of `nfn_matrix`; None when the table has none."""
    if not {"nfn_ci_low", "nfn_ci_high"} <= set(modules.columns):
        return None
    out = []
    for col in ("nfn_ci_low", "nfn_ci_high"):
        grid = modules.groupby(["layer", "type"])[col].mean().unstack("type")
        grid = grid.reindex(columns=_type_order(grid.columns)).sort_index()
        out.append(grid.to_numpy(dtype=float))
    return list(grid.index), list(grid.columns), out[0], out[1]


def nfn_heatmap(modules, path: str | Path, title: str = "NFN per layer and module type") -> Path:
    """Heatmap of per-module NFN (rows: layers, columns: module types), centred on 1 (= random baseline).

    `modules` is a DataFrame with columns `layer, type, nfn` (e.g. `Scores.modules`) or a `Scores`.
    """
    modules = getattr(modules, "modules", modules)
    missing = {"layer", "type", "nfn"} - set(modules.columns)
    if missing:
        raise ValueError(f"nfn_heatmap needs columns layer, type, nfn; missing {sorted(missing)}")
    if len(modules) == 0:
        raise ValueError("nfn_heatmap got an empty table; score a model first")
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    layers, types, mat = nfn_matrix(modules)
    finite = mat[np.isfinite(mat)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.5, 1.5)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 0.999), vmax=max(hi, 1.001))
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(types), 1.2 + 0.22 * len(layers)))
    im = ax.imshow(mat, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax.set_xticks(range(len(types)), types)
    step = max(1, len(layers) // 16)
    ax.set_yticks(range(0, len(layers), step), [str(x) for x in layers[::step]])
    ax.set_xlabel("module type (LoRA goes to the lowest NFN)")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9, pad=16)  # room for the per-type means printed above the columns
    means = np.nanmean(mat, axis=0)
    for j, m in enumerate(means):
        ax.text(j, -0.75, f"{m:.2f}", ha="center", va="bottom", fontsize=7)
    intervals = nfn_interval_matrix(modules)
    if intervals is not None:  # a dot: the cell's interval contains 1 (not distinguishable from random)
        _, _, low, high = intervals
        ys, xs = np.nonzero((low <= 1.0) & (high >= 1.0))
        ax.scatter(xs, ys, s=6, c="black", marker="o", linewidths=0)
        ax.set_xlabel("module type (LoRA goes to the lowest NFN); dot: 95% interval contains 1")
    fig.colorbar(im, ax=ax, label="NFN (1 = random)")
    return _save(fig, path)


def comparison_chart(results, path: str | Path, metric: str | None = None,
                     title: str = "finetuning arms at matched budget") -> Path:
    """Bar chart of one metric per arm with intervals.

    `results` has columns `arm, value` and optionally `ci_low, ci_high, metric, seed`. Several seeds of
    an arm are averaged (the interval is then the min/max over seeds unless ci columns are given).
    Lower is better for `nll`, higher for accuracy-like metrics; the title says which.
    """
    if "arm" not in results.columns or "value" not in results.columns:
        raise ValueError("comparison_chart needs columns arm and value (e.g. the evaluation table)")
    df = results
    if metric is not None and "metric" in df.columns:
        df = df[df["metric"] == metric]
    if len(df) == 0:
        raise ValueError(f"comparison_chart: no rows for metric {metric!r}")
    plt = _pyplot()
    agg = df.groupby("arm", sort=False).agg(
        value=("value", "mean"),
        lo=("ci_low" if "ci_low" in df.columns else "value", "min"),
        hi=("ci_high" if "ci_high" in df.columns else "value", "max"),
        n=("value", "size"),
    )
    agg["lo"] = agg["lo"].fillna(agg["value"])
    agg["hi"] = agg["hi"].fillna(agg["value"])
    x = np.arange(len(agg))
    err = np.vstack([agg["value"] - agg["lo"], agg["hi"] - agg["value"]]).clip(min=0)
    fig, ax = plt.subplots(figsize=(1.5 + 1.0 * len(agg), 3.2))
    ax.bar(x, agg["value"], yerr=err, capsize=4, color="#4a7ab5")
    ax.set_xticks(x, [f"{a}\n(n={n})" for a, n in zip(agg.index, agg["n"])])
    better = "lower is better" if (metric or "").startswith("nll") else "higher is better"
    ax.set_ylabel(f"{metric or 'value'} ({better})")
    ax.set_title(title, fontsize=9)
    span = float(agg["hi"].max() - agg["lo"].min()) or 1.0
    ax.set_ylim(max(0.0, float(agg["lo"].min()) - 0.3 * span), float(agg["hi"].max()) + 0.3 * span)
    return _save(fig, path)
