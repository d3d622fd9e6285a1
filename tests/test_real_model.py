"""The method on a real pretrained model (SmolLM2-135M-Instruct, an offline asset) and real task data.

Golden values: the per-type NFN table of SmolLM2 on a fixed 32-row sample of offline GSM8K and RTE
(probe estimator, seed 0, 256 probes, max_length 128). The asset's converted weights are pinned by
digest and the sample by its content hash, so the numbers only move with the scorer's arithmetic:
tolerance 2e-3 relative (covers BLAS/thread differences across CPUs; any real change to the method
moves them by far more). The ordering v < up < down < o < gate < q < k matches what the paper reports
for Qwen3/Gemma3-style models (v well below 1).
"""


import json
import re

import pytest

pytestmark = pytest.mark.slow

GOLDEN = {
    "gsm8k": ("480d8d7e3ccabeab9aacce7bcbdf2f9125533da63aa8a63217a4120a6c5ba5a0",
              {"q": 1.395103, "k": 1.595863, "v": 0.604151, "o": 1.171793, "gate": 1.260629, "up": 0.939212,
               "down": 1.041391}),
    "rte": ("cf21b5e6c3bfd919d58a2d603a420c810b031ffe340d4f120fd79555de343476",
            {"q": 1.36358, "k": 1.543328, "v": 0.606262, "o": 1.183506, "gate": 1.243618, "up": 0.932501,
             "down": 1.042489}),
}


@pytest.fixture(scope="module")
def smollm2():
    from plop_core import load_model

    return load_model("smollm2-135m-instruct", progress=False)


def _score(lm, task, estimator="probe"):
    from plop_core import sample_task, score_nfn

    sample = sample_task(task, n=32, seed=0, source="offline")
    scores = score_nfn(lm.model, lm.tokenizer, sample.texts, batch_size=8, max_length=128, estimator=estimator,
                       seed=0, n_probe=256, n_bootstrap=200, progress=False)
    return sample, scores


@pytest.mark.parametrize("task", sorted(GOLDEN))
def test_golden_nfn_table_on_real_model(smollm2, task):
    from plop_core import select_placement

    sample_hash, golden = GOLDEN[task]
    sample, scores = _score(smollm2, task)
    assert sample.sample_hash == sample_hash
    got = dict(zip(scores.types["type"], scores.types["nfn"]))
    assert got == pytest.approx(golden, rel=2e-3)
    assert scores.modules["layer"].nunique() == 30 and len(scores.modules) == 30 * 7
    assert (scores.types["nfn_ci_low"] <= scores.types["nfn"]).all()
    assert (scores.types["nfn"] <= scores.types["nfn_ci_high"]).all()
    placement = select_placement(scores, "plop", k=3)
    assert placement.types == ("v", "up", "down")  # canonical order
    assert len(placement.target_modules) == 90
    assert scores.stability(3) > 0.9


def test_estimators_agree_on_real_model(smollm2):
    """probe vs analytic (an upper bound on rho): same type ranking, baselines within a few percent."""
    _, probe = _score(smollm2, "gsm8k", "probe")
    _, analytic = _score(smollm2, "gsm8k", "analytic")
    rank = lambda s: list(s.types.sort_values("nfn")["type"])  # noqa: E731
    assert rank(probe) == rank(analytic)
    a, p, se = (analytic.modules["baseline_norm"].to_numpy(), probe.modules["baseline_norm"].to_numpy(),
                probe.modules["baseline_se"].to_numpy())
    assert (a >= p - 4 * se).all()  # Jensen: the analytic RMS bounds rho from above, up to probe noise
    assert (a / p < 1.10).all()  # and the gap is small for these weights


def test_cli_score_on_real_model(tmp_path, capsys):
    """`plop score` end to end on the real asset: table printed, every file written, LoraConfig loadable."""
    import pandas as pd
    from peft import LoraConfig

    from plop_core.cli import main

    out = tmp_path / "score"
    rc = main(["score", "--model", "smollm2-135m-instruct", "--data", "gsm8k", "--n-samples", "16",
               "--max-length", "64", "--n-bootstrap", "50", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "NFN by module type" in text and "placement (plop)" in text
    for name in ("modules.parquet", "types.parquet", "placement.json", "adapter_config.json", "sample.parquet",
                 "nfn_heatmap.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.tmp*"))
    types = pd.read_parquet(out / "types.parquet")
    assert set(types["type"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    cfg = LoraConfig.from_pretrained(str(out))
    assert cfg.r == 16 and cfg.lora_alpha == 32
    # target_modules is one anchored regex (PEFT full-matches a string); it selects exactly the placement's
    # 90 modules (v, up, down in each of 30 layers) among all scored modules
    placed = set(json.loads((out / "placement.json").read_text())["target_modules"])
    scored = pd.read_parquet(out / "modules.parquet")["module"]
    assert len(placed) == 90 and {m for m in scored if re.fullmatch(cfg.target_modules, m)} == placed
