"""The committed study results are exactly the units the current code plans for the committed sweep YAMLs.

Why: docs/study.md promises that rerunning any study sweep with its results root kept recomputes nothing.
A unit is reused only when its key matches, and the key hashes the configs, so a change that alters a key
(a new config field with a default, a different hash input) silently turns every committed result of the
study into an orphan that the next run recomputes (it happened once: `scorer.shards` re-keyed the
session-1 cells). This test recomputes every committed unit's key from its record and the YAML, without
loading a model or drawing a sample, and names the units that a rerun would not find.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plop_core.config import load_sweep_config
from plop_core.units.plan import cell_key, experiment_key, run_key
from plop_core.units.records import ModelRef, SampleRef

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "study" / "results"
SWEEPS = sorted(p for p in (ROOT / "deploy" / "sweeps").glob("study-*.yaml") if (RESULTS / p.stem).is_dir())


def _planned_cell_key(cfg, rec: dict) -> str:
    spec = next((m for m in cfg.models if m.name == rec["model_name"]), None)
    assert spec is not None, f"{cfg.name}: model {rec['model_name']!r} has results but is not in the YAML"
    model = ModelRef(spec=spec, name=rec["model_name"], identity=rec["identity"], identity_key=rec["model_identity"])
    sample = SampleRef(task=rec["task_name"], task_name=rec["task_name"], sample_hash=rec["sample_hash"], path="-",
                       n_rows=0, sampling=cfg.sampling)
    return cell_key(model, sample, cfg)


@pytest.mark.parametrize("sweep", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_committed_units_have_the_keys_the_yaml_plans(sweep, monkeypatch):
    monkeypatch.setenv("PLOP_CODE_VERSION", "study-1")  # the study's pinned version (docs/study.md)
    cfg = load_sweep_config(sweep)
    root = RESULTS / sweep.stem
    stale, cells = [], {}
    for path in sorted(root.glob("cells/model=*/task=*/*/record.json")):
        rec = json.loads(path.read_text())
        where = f"{rec['model_name']}/{rec['task_name']}"
        want = _planned_cell_key(cfg, rec)
        cells[(rec["model_name"], rec["task_name"])] = want
        if rec["key"] != want or path.parent.name != want:
            stale.append(f"cell {where}: committed {rec['key']}, planned {want}")
    assert cells, f"{sweep.stem}: results root without a scored cell"
    for exp_dir in sorted(root.glob("finetune/model=*/task=*/*/")):
        model, task = exp_dir.parent.parent.name.split("=", 1)[1], exp_dir.parent.name.split("=", 1)[1]
        want = experiment_key(cells[(model, task)], cfg) if (model, task) in cells else "(no cell)"
        if exp_dir.name != want:
            stale.append(f"experiment {model}/{task}: committed {exp_dir.name}, planned {want}")
            continue
        for rec_path in [exp_dir / "base" / "record.json", *sorted(exp_dir.glob("runs/*/record.json"))]:
            if rec_path.exists():
                rec = json.loads(rec_path.read_text())
                planned = run_key(want, rec["arm"], rec["seed"])
                if rec["key"] != planned:
                    stale.append(f"run {model}/{task} {rec['arm']} seed {rec['seed']}: committed {rec['key']}, "
                                 f"planned {planned}")
    assert not stale, (f"{sweep.stem}: a rerun would recompute {len(stale)} committed unit(s) (keep keys stable, "
                       "or bump PLOP_CODE_VERSION and rerun the study on purpose):\n" + "\n".join(stale))
