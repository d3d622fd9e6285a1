"""Study point 5, GRPO: does the training reward rise, and how much of each step carries a signal?

Usage:
    .venv/bin/python benchmarks/study/grpo_reward.py                         # the committed study-grpo sweep
    .venv/bin/python benchmarks/study/grpo_reward.py --sweep study-grpo-pilot

Reads each finished run's training curve from its record (TRL's per-step logs, as the pipeline stores
them): `reward` is the mean correctness of the step's sampled completions (2 prompts x 4 samples),
`frac_reward_zero_std` the share of the step's prompt groups whose samples all got the same reward (no
gradient from them). Per arm: the mean reward over the first and the second half of training, their
difference paired by seed (t over seeds), and the mean share of groups with a signal. The held-out
answer to "above the base model?" is held-out exact match, here per arm against the base model (arms.py
compares arms with plop): per held-out problem the arm's exact match averaged over seeds minus the base's,
a paired t over problems, Holm over the arms, and how many problems the arm gains or loses. The training
reward is on training prompts with sampling, so it is the noisier, complementary view. Writes
docs/study/tables/<name>_reward.md, <name>_vs_base.md and docs/study/<name>_reward.png (per-step reward,
10-step rolling mean; thin lines per seed, thick the mean over seeds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/study/grpo_reward.py"
WINDOW = 10


def curves(recs: list[dict]) -> pd.DataFrame:
    """One row per (arm, seed, step) of the finished GRPO runs."""
    rows = [{"arm": r["arm"], "seed": r["seed"], "step": c["step"], "reward": c["reward"],
             "signal": 1.0 - c["frac_reward_zero_std"]}
            for r in recs if r["arm"] != "base" for c in r["train"].get("curve") or [] if "reward" in c]
    return pd.DataFrame(rows)


def reward_table(cur: pd.DataFrame) -> pd.DataFrame:
    half = cur["step"].max() / 2
    per_run = (cur.assign(part=np.where(cur["step"] <= half, "first", "second"))
               .pivot_table(index=["arm", "seed"], columns="part", values="reward", aggfunc="mean"))
    signal = cur.groupby(["arm", "seed"])["signal"].mean()
    out = []
    for arm, g in per_run.groupby(level="arm", sort=False):
        rise = (g["second"] - g["first"]).to_numpy()
        p = stats.ttest_1samp(rise, 0.0).pvalue if len(rise) >= 2 else float("nan")
        out.append({"arm": arm, "n_seeds": len(g), "reward_first_half": g["first"].mean(),
                    "reward_second_half": g["second"].mean(), "rise": rise.mean(), "rise_p_seeds": p,
                    "rises_in_seeds": f"{int((rise > 0).sum())} of {len(rise)}",
                    "groups_with_signal": signal.loc[arm].mean()})
    return pd.DataFrame(out)


def vs_base(recs: list[dict], metric: str = "exact_match") -> pd.DataFrame:
    """Each arm's held-out metric against the base model's, paired by problem (see the module docstring)."""
    base = [np.asarray(r["per_row"][metric], float) for r in recs if r["arm"] == "base"]
    if not base:
        return pd.DataFrame()
    out = []
    for arm in dict.fromkeys(r["arm"] for r in recs if r["arm"] != "base"):
        per_seed = np.array([r["per_row"][metric] for r in recs if r["arm"] == arm], float)
        d = per_seed.mean(axis=0) - base[0]
        out.append({"arm": arm, "n_seeds": len(per_seed), metric: per_seed.mean(),
                    "per_seed": " / ".join(f"{v:.3f}" for v in per_seed.mean(axis=1)), "base": base[0].mean(),
                    "diff": d.mean(), "problems_gained": int((d > 0).sum()), "problems_lost": int((d < 0).sum()),
                    "p_rows": stats.ttest_1samp(d, 0.0).pvalue if d.any() else 1.0})
    table = pd.DataFrame(out)
    table["p_rows_holm"] = common.holm(table["p_rows"].to_numpy())
    return table


def figure(cur: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (arm, g) in enumerate(cur.groupby("arm", sort=False)):
        color = f"C{i}"
        wide = g.pivot(index="step", columns="seed", values="reward").rolling(WINDOW, min_periods=WINDOW // 2).mean()
        ax.plot(wide.index, wide.to_numpy(), color=color, lw=0.6, alpha=0.5)
        ax.plot(wide.index, wide.mean(axis=1), color=color, lw=2, label=f"{arm} ({wide.shape[1]} seed{'s' * (wide.shape[1] > 1)})")
    ax.set(xlabel="GRPO step", ylabel=f"training reward\n({WINDOW}-step rolling mean)",
           title="mean correctness of the sampled completions")
    ax.legend(loc="best")
    common.save_figure(fig, path)


def main(argv=None) -> None:
    args = common.sweep_args(__doc__, "study-grpo", None, argv)
    name = args.sweep.removeprefix("study-").replace("-", "_") + "_reward"
    recs = common.read_records(args.sweep)
    cur = curves(recs)
    table = reward_table(cur) if len(cur) else pd.DataFrame()
    last = int(cur["step"].max()) if len(cur) else 0
    note = ("reward = mean correctness of a step's sampled completions (temperature 1) on training prompts; "
            f"first/second half: steps 1-{last // 2} / {last // 2 + 1}-{last}; rise = second - first, per seed, "
            "then averaged (p: one-sample t over seeds); groups_with_signal = 1 - frac_reward_zero_std, averaged.")
    command = COMMAND if args.sweep == "study-grpo" else f"{COMMAND} --sweep {args.sweep}"
    common.write_table(name, table, command, note)
    common.write_table(name.replace("_reward", "_vs_base"), vs_base(recs), command,
                       "exact match on the held-out problems, the arm's averaged over its seeds; diff = arm - base; "
                       "problems gained/lost: where the arm's seed-averaged exact match is above/below the base's; "
                       "p_rows: paired t over problems; p_rows_holm: Holm over the arms.")
    if len(cur):
        figure(cur, args.figure or common.FIGS / f"{name}.png")


if __name__ == "__main__":
    main()
