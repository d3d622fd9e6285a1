"""study-k's k = 3 arm is study-arms' `plop` arm under another sweep: the committed runs must be identical.

Why: docs/study.md cites this as the study's reproducibility check (same placement, budget, data and seed in
two sweeps give the same held-out NLL and the same per-row values, bit for bit). This reads the committed
run records only, so the claim is checked on every CI run without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "study" / "results"


def _runs(sweep: str, task: str, arm_dir: str) -> dict[int, dict]:
    paths = (RESULTS / sweep / "finetune" / "model=smollm2-135m" / f"task={task}").glob(f"*/runs/{arm_dir}_seed*/record.json")
    return {rec["seed"]: rec for rec in (json.loads(p.read_text()) for p in paths)}


@pytest.mark.parametrize("task", ["arithmetic", "gsm8k"])
def test_study_k_top3_arm_reproduces_study_arms_plop(task):
    k3, plop = _runs("study-k", task, "v_up_down"), _runs("study-arms", task, "plop")
    assert k3, f"study-k has no finished v,up,down run on {task}"
    assert set(k3) <= set(plop), f"study-arms lacks seeds {sorted(set(k3) - set(plop))} on {task}"
    for seed, rec in k3.items():
        assert rec["types"] == plop[seed]["types"] and rec["rank"] == plop[seed]["rank"]
        assert rec["metrics"] == plop[seed]["metrics"], f"{task} seed {seed}"
        assert rec["per_row"] == plop[seed]["per_row"], f"{task} seed {seed}"
