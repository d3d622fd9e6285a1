"""Study point 5: the arms users compare (plop against plop_inverse, attn, mlp, all, random, peft_default).

Usage:
    .venv/bin/python benchmarks/study/arms.py                          # the committed study-arms sweep
    .venv/bin/python benchmarks/study/arms.py --sweep study-grpo       # GRPO arms: exact match
    .venv/bin/python benchmarks/study/arms.py --sweep study-k --reference v,up,down   # vary k: top-3 as reference
    .venv/bin/python benchmarks/study/arms.py --results DIR --sweep NAME

Summarises each experiment's finished runs (their records) with plop_core.comparison.summarize, the
pipeline's own statistics (what its `summary.parquet` holds once the last run is in:
per arm the mean over seeds with a t-interval, the difference to `plop` paired by seed with its t-test,
and a paired t-test over held-out rows) and adds the multiple-comparison correction: Holm over the
comparisons of one experiment (every arm but the reference and base), for both p-values. A difference is
`metric(arm) - metric(reference)`; with NLL positive means the reference is better, with exact match negative
does. The reference is `plop` unless `--reference` names another arm: study-k has no `plop` arm, its arms
are PLoP's top-k types written out, and its top-3 (`v,up,down`, the placement `plop` would choose) is the
one the others are compared with.
The metric is the one the sweep evaluated (nll or exact_match). Writes docs/study/tables/<name>.md and
docs/study/<name>.png (mean per arm with intervals, base dashed), <name> the sweep's name without
`study-` (study-arms -> arms, study-grpo -> grpo).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/study/arms.py"


def arm_order(sweep: str) -> list[str] | None:
    """The arms in the order the sweep's YAML lists them (study-k: by k), then base; None for a results folder
    without a committed YAML (a pilot), which keeps the order the runs finished in."""
    import yaml

    path = common.ROOT / "deploy" / "sweeps" / f"{sweep}.yaml"
    return [*yaml.safe_load(path.read_text())["finetune"]["arms"], "base"] if path.exists() else None


def read_summaries(recs: list[dict], metric: str = "nll", reference: str = "plop") -> pd.DataFrame:
    """Per (model, task): plop_core.comparison.summarize over the runs finished so far (`common.read_records`),
    i.e. the experiment's own summary once every run is in, and the same statistics on fewer seeds before."""
    from plop_core.comparison import summarize

    out = []
    for (model, task), group in itertools.groupby(recs, key=lambda r: (r["model"], r["task"])):
        group = list(group)
        runs = pd.DataFrame([{**{k: r[k] for k in ("arm", "seed", "types", "rank", "trainable_params")},
                              **{f"{metric}{x}": r["metrics"].get(f"{metric}{x}") for x in ("", "_low", "_high")}}
                             for r in group])
        per_row = {(r["arm"], r["seed"]): {metric: np.asarray(r["per_row"][metric], float)} for r in group}
        if reference in set(runs["arm"]):
            out.append(summarize(runs, per_row, [metric], reference=reference).assign(model=model, task=task))
    if not out:
        return pd.DataFrame()
    keep = ["model", "task", "arm", "types", "rank", "trainable_params", "n_seeds", metric, f"{metric}_low",
            f"{metric}_high", f"{metric}_diff", f"{metric}_p_seeds", f"{metric}_p_rows"]
    return pd.concat(out, ignore_index=True)[keep]


def with_holm(summary: pd.DataFrame, metric: str = "nll", reference: str = "plop",
              order: list[str] | None = None) -> pd.DataFrame:
    parts = []
    for _, g in summary.groupby(["model", "task"], sort=False):
        g = g.copy()
        compared = ~g["arm"].isin([reference, "base"])
        for col in ("p_seeds", "p_rows"):
            g[f"{col}_holm"] = np.nan
            g.loc[compared, f"{col}_holm"] = common.holm(g.loc[compared, f"{metric}_{col}"].to_numpy())
        if order:
            g["order"] = [order.index(a) if a in order else len(order) for a in g["arm"]]
            g = g.sort_values("order", kind="stable").drop(columns="order")
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


def figure(table: pd.DataFrame, path: Path, metric: str = "nll", reference: str = "plop") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(table[["model", "task"]].itertuples(index=False, name=None)))
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.8), squeeze=False)
    for ax, (model, task) in zip(axes[0], cells):
        d = table[(table["model"] == model) & (table["task"] == task)]
        arms, base = d[d["arm"] != "base"], d[d["arm"] == "base"]
        y = arms[metric].to_numpy()
        err = np.vstack([y - arms[f"{metric}_low"].to_numpy(), arms[f"{metric}_high"].to_numpy() - y])
        for x, (arm, v, e_lo, e_hi) in enumerate(zip(arms["arm"], y, err[0], err[1])):
            ax.errorbar([x], [v], yerr=[[e_lo], [e_hi]], fmt="o", capsize=3,
                        color="tab:green" if arm == reference else "tab:blue")
        title = f"{model} x {task}"
        if len(base):  # points, not bars: the arms differ by a few hundredths of a nat
            b0, lo, hi = float(base[metric].iloc[0]), float(arms[f"{metric}_low"].min()), float(arms[f"{metric}_high"].max())
            if lo - 2 * (hi - lo) <= b0 <= hi + 2 * (hi - lo):
                ax.axhline(b0, color="grey", ls="--", lw=1, label="base model")
                ax.legend(loc="best")
            else:  # far off: a line there would squash the arms into one row of dots
                title += f"\n(base model {b0:.3f}, off the scale)"
        ax.set_xticks(range(len(arms)), arms["arm"], rotation=30, ha="right")
        seeds = int(arms["n_seeds"].min()) if len(arms) else 0
        interval = "95% t-interval over seeds" if seeds >= 2 else "1 seed: 95% interval over held-out rows"
        ax.set(ylabel=f"held-out {metric}\n(mean over seeds; {interval})", title=title)
    common.save_figure(fig, path)


METRICS = ("nll", "exact_match")  # what the study's finetuning sweeps evaluate, in order of preference


def main(argv=None) -> None:
    args = common.sweep_args(__doc__, "study-arms", None, argv, reference=True)
    ref = args.reference
    name = args.sweep.removeprefix("study-").replace("-", "_")
    recs = common.read_records(args.sweep)
    found = {m for r in recs for m in r["metrics"]}
    metric = next((m for m in METRICS if m in found), METRICS[0])
    summary = read_summaries(recs, metric, ref)
    table = with_holm(summary, metric, ref, arm_order(args.sweep)) if len(summary) else summary
    shown, better = {"nll": ("NLL", "positive"), "exact_match": ("exact match", "negative")}[metric]
    note = (f"diff = {shown}(arm) - {shown}({ref}), paired by seed ({better}: {ref} better); p_seeds: paired t "
            f"over seeds; p_rows: paired t over held-out rows (per-row {shown} averaged over seeds); *_holm: "
            f"Holm-adjusted over the arms compared with {ref} in that experiment.")
    command = COMMAND if args.sweep == "study-arms" else f"{COMMAND} --sweep {args.sweep}"
    command += f" --reference {ref}" if ref != "plop" else ""
    common.write_table(name, table, command, note)
    if len(table):
        figure(table, args.figure or common.FIGS / f"{name}.png", metric, ref)


if __name__ == "__main__":
    main()
