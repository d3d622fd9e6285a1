"""Study point 6: the cost of scoring against one epoch of LoRA finetuning, per model, from the same run.

Usage (repo root, after the sweep study-cost-sft):
    .venv/bin/python benchmarks/study/cost.py
Writes docs/study/tables/cost.md and docs/study/cost.png.

Both halves come from one `plop sweep deploy/sweeps/study-cost-sft.yaml` per model, so they ran on the same
box under the same load, minutes apart. Scoring: the sweep's cell (gsm8k, 128 sequences of <= 256 tokens,
probe, 1000 bootstrap resamples: study-nfn-maps' gsm8k cell) from its record.json (`seconds` = the scoring
pass incl. baselines and bootstrap, model load excluded; `meta.n_tokens`). Finetuning: the sweep's runs
table (finetune/**/runs.parquet: `train_s` = TRL's train() wall time for `steps` optimizer steps of batch 4,
<= 256 tokens, LoRA r=16 on the plop placement; `tokens_per_s` from TRL's token count).
Extrapolation, stated: one epoch = ceil(rows / 4) steps at the measured seconds per step (warm-up and
trainer set-up included in the mean, so it slightly overstates), for GSM8K's 7,473 hub training rows;
the paper's recipe (MetaMathQA, 2 epochs, length 1024) is two orders of magnitude more.
"""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")
import duckdb
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from common import FIGS, RESULTS, ordered_models, write_table

CMD = ".venv/bin/python benchmarks/study/cost.py"
EPOCH_ROWS = 7473  # GSM8K train split on the hub
BATCH = 4


def scoring() -> pd.DataFrame:
    rows = []
    for rec in (RESULTS / "study-cost-sft" / "cells").glob("*/*/*/record.json"):
        r = json.loads(rec.read_text())
        if r.get("code_version") != "study-1":
            continue
        rows.append({"model": r["model_name"], "task": r["task_name"], "score_s": r["seconds"],
                     "n_seq": r["meta"]["n_sequences"], "n_tokens": r["meta"]["n_tokens"]})
    return pd.DataFrame(rows)


def training() -> pd.DataFrame:
    files = list((RESULTS / "study-cost-sft" / "finetune").glob("**/runs.parquet"))
    if not files:
        return pd.DataFrame()
    df = duckdb.sql(f"SELECT * FROM read_parquet({[str(f) for f in files]}, union_by_name = true) "
                    "WHERE code_version = 'study-1'").df()
    return df


def main() -> None:
    sc, tr = scoring(), training()
    rows = []
    for m in ordered_models(list(sc.get("model", [])) + list(tr.get("model_name", []))):
        s = sc[sc["model"] == m] if not sc.empty else sc
        t = tr[tr["model_name"] == m] if not tr.empty else tr
        row = {"model": m}
        if len(s):
            row.update({"score s (128 seq)": float(s["score_s"].mean()),
                        "score tokens/s": float(s["n_tokens"].sum() / s["score_s"].sum())})
        if len(t):
            sps = float((t["train_s"] / t["steps"]).mean())
            steps = math.ceil(EPOCH_ROWS / BATCH)
            row.update({"SFT steps run": int(t["steps"].sum()), "SFT s / step": sps,
                        "SFT tokens/s": float(t["tokens_per_s"].mean()),
                        f"epoch s ({EPOCH_ROWS} rows, {steps} steps)": sps * steps})
            if len(s):
                row["SFT / scoring, per token"] = row["score tokens/s"] / row["SFT tokens/s"]
                row["epoch / one scoring cell"] = sps * steps / float(s["score_s"].mean())
        rows.append(row)
    df = pd.DataFrame(rows)
    write_table("cost", df, CMD, "Scoring (gsm8k, 128 sequences, <= 256 tokens, probe, 1000 bootstrap resamples) vs "
                "LoRA-SFT (batch 4, <= 256 tokens, r=16, 6 steps), both from one study-cost-sft run per model on "
                "the 2-core CPU box.")
    epoch_col = [c for c in df.columns if c.startswith("epoch s")]
    if epoch_col and "score s (128 seq)" in df:
        d = df.dropna(subset=[epoch_col[0], "score s (128 seq)"])
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(d))
        ax.bar(x - 0.2, d["score s (128 seq)"], 0.4, label="NFN scoring, one task (128 seq)")
        ax.bar(x + 0.2, d[epoch_col[0]], 0.4, label=f"one SFT epoch, GSM8K {EPOCH_ROWS} rows (extrapolated)")
        ax.set_yscale("log")
        ax.set_ylim(10, d[epoch_col[0]].max() * 8)
        for xi, a, b in zip(x, d["score s (128 seq)"], d[epoch_col[0]], strict=True):
            ax.annotate(f"{a:,.0f} s", (xi - 0.2, a), ha="center", va="bottom", fontsize=8)
            ax.annotate(f"{b:,.0f} s", (xi + 0.2, b), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, d["model"])
        ax.set_ylabel("seconds on the 2-core CPU box")
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(FIGS / "cost.png", dpi=110)


if __name__ == "__main__":
    main()
