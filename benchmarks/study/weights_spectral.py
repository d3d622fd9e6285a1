"""Weights-only statistics of every placement candidate (study point 3: does the data matter?).

Usage (repo root, venv, `source .ci/env.sh`, assets fetched under $PLOP_HOME):
    nice -n 15 .venv/bin/python benchmarks/study/weights_spectral.py
writes docs/study/results/weights-spectral/spectral.parquet: one row per (model, layer, type) weight.

Why: if PLoP's type order is the same on every task and on random tokens, it may be a property of the
weights alone. This script computes, from the safetensors files the sweeps scored (the same offline
assets, fp32, no forward pass), per weight W (d_out x d_in):
- `rms_gain` = ||W||_F / sqrt(d_in): the `analytic` baseline, E||Wu|| up to Jensen's gap;
- `stable_rank` = ||W||_F^2 / sigma_1^2;
- `anisotropy` = sigma_1 / rms_gain = sqrt(d_in / stable_rank): the largest NFN any input can reach
  (z along W's top right-singular vector). Pre-registered weights-only rule: LoRA on the k types with the
  LOWEST mean anisotropy (a type that cannot amplify any direction much is "not aligned" for any data);
- `effective_rank` = exp(entropy of sigma / sum sigma) (Roy & Vetterli);
- `spectrum_snr`: Spectrum-style (Hartford et al. 2024) signal-to-noise ratio: sum of singular values
  above the Marchenko-Pastur edge sigma_hat (1 + sqrt(beta)) over the sum of those below, sigma_hat =
  IQR(singular values) / 1.349, beta = min(d_out, d_in) / max(d_out, d_in).
benchmarks/study/data_matters.py compares the rankings these give with the NFN rankings.
Names matched: `layers.<i>.(self_attn|mlp).<type>_proj.weight` (Llama, Gemma-3, Qwen2 all use them).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "study" / "results" / "weights-spectral" / "spectral.parquet"
MODELS = {"smollm2-135m": "smollm2-135m-instruct", "gemma3-270m": "gemma3-270m",
          "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct"}
NAME = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.weight$")


def stats(w: torch.Tensor) -> dict:
    d_out, d_in = w.shape
    s = torch.linalg.svdvals(w).double().numpy()
    fro = float(np.sqrt((s ** 2).sum()))
    rms = fro / np.sqrt(d_in)
    p = s / s.sum()
    q75, q25 = np.percentile(s, [75, 25])
    sigma_hat = (q75 - q25) / 1.349
    edge = sigma_hat * (1 + np.sqrt(min(d_out, d_in) / max(d_out, d_in)))
    noise = s[s <= edge].sum()
    return {"d_in": d_in, "d_out": d_out, "fro": fro, "sigma_1": float(s[0]), "rms_gain": rms,
            "stable_rank": fro ** 2 / s[0] ** 2, "anisotropy": float(s[0] / rms),
            "effective_rank": float(np.exp(-(p * np.log(p + 1e-30)).sum())),
            "spectrum_snr": float(s[s > edge].sum() / noise) if noise > 0 else float("inf")}


def model_rows(name: str, asset: str) -> list[dict]:
    from plop_core.weights import weights_sha256

    folder = Path(os.environ.get("PLOP_HOME", ROOT / ".plop")) / "assets" / asset
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        sys.exit(f"{folder}: no safetensors; fetch it with `plop assets fetch {asset}`")
    sha = weights_sha256(folder)
    rows = []
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                m = NAME.search(key)
                if m:
                    w = st.get_tensor(key).float()
                    rows.append({"model": name, "asset": asset, "weights_sha256": sha, "param": key,
                                 "layer": int(m.group(1)), "type": m.group(2), **stats(w)})
        print(f"{name}: {len(rows)} weights", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("PLOP_STUDY_THREADS", "1")))
    df = pd.DataFrame([r for n, a in MODELS.items() for r in model_rows(n, a)])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(OUT, index=False)
    print(df.groupby(["model", "type"], sort=False)[["anisotropy", "stable_rank", "spectrum_snr"]].mean().round(3))
