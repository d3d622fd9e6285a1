"""Pipeline units without an orchestrator: cache keys, cell planning, the scoring cell's files, the CLI."""

import json

import pandas as pd
import pytest

from plop_core import artifacts, pipeline
from plop_core.cli import main
from plop_core.config import load_sweep_config


def _cfg(tmp_path, **over):
    base = {"name": "t", "models": [{"id": "m", "name": "m"}], "tasks": ["arithmetic", "data/my file.jsonl"],
            "sampling": {"n_samples": 8, "max_length": 32}, "scorer": {"n_probe": 16, "n_bootstrap": 10},
            "outputs": {"root": str(tmp_path / "res")}}
    base.update(over)
    return load_sweep_config(base)


MODEL = {"identity_key": "abc", "model_name": "m", "spec": {"id": "m"}, "identity": {"id": "m"}}
SAMPLES = {"arithmetic": {"sample_hash": "s1", "task_name": "arithmetic", "n_rows": 8},
           "data/my file.jsonl": {"sample_hash": "s2", "task_name": "my_file", "n_rows": 8}}


def test_cell_key_changes_with_everything_that_determines_the_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("PLOP_CODE_VERSION", "v1")
    artifacts.code_version.cache_clear()
    cfg = _cfg(tmp_path)
    key = pipeline.scoring_cell_key(MODEL, SAMPLES["arithmetic"], cfg)
    assert key == pipeline.scoring_cell_key(dict(MODEL), dict(SAMPLES["arithmetic"]), _cfg(tmp_path))
    others = {
        pipeline.scoring_cell_key(dict(MODEL, identity_key="abd"), SAMPLES["arithmetic"], cfg),
        pipeline.scoring_cell_key(MODEL, dict(SAMPLES["arithmetic"], sample_hash="s9"), cfg),
        pipeline.scoring_cell_key(MODEL, SAMPLES["arithmetic"], _cfg(tmp_path, scorer={"n_probe": 32})),
        pipeline.scoring_cell_key(MODEL, SAMPLES["arithmetic"], _cfg(tmp_path, sampling={"max_length": 64})),
        pipeline.scoring_cell_key(MODEL, SAMPLES["arithmetic"], _cfg(tmp_path, selection={"k": 2})),
    }
    # the results root and the sweep name do not change what is computed
    assert pipeline.scoring_cell_key(MODEL, SAMPLES["arithmetic"], _cfg(tmp_path / "x", name="other")) == key
    monkeypatch.setenv("PLOP_CODE_VERSION", "v2")
    artifacts.code_version.cache_clear()
    others.add(pipeline.scoring_cell_key(MODEL, SAMPLES["arithmetic"], cfg))
    artifacts.code_version.cache_clear()
    assert key not in others and len(others) == 6


def test_plan_groups_cells_by_model_and_marks_done_by_record(tmp_path):
    cfg = _cfg(tmp_path, models=[{"id": "a"}, {"id": "b"}])
    models = [dict(MODEL, model_name="a", identity_key="ka"), dict(MODEL, model_name="b", identity_key="kb")]
    cells = pipeline.plan_scoring_cells(cfg, models, SAMPLES)
    assert [(c["model_name"], c["task_name"]) for c in cells] == [
        ("a", "arithmetic"), ("a", "my_file"), ("b", "arithmetic"), ("b", "my_file")]
    assert len({c["cell_key"] for c in cells}) == 4
    assert not pipeline.cell_done(cells[0])
    artifacts.atomic_write_json(pipeline.cell_dir(cells[0]) / "record.json", {"x": 1})
    assert pipeline.cell_done(cells[0]) and not pipeline.cell_done(cells[1])
    assert pipeline.task_label("data/my file.jsonl") == "my_file"


def test_scoring_cell_writes_schema_files_and_loads_model_once(tmp_path, llama_dir):
    cfg = _cfg(tmp_path, models=[{"id": str(llama_dir), "name": "tiny"}], tasks=["arithmetic"])
    model = pipeline.model_record(cfg.models[0])
    sample = pipeline.prepare_sample("arithmetic", cfg.sampling, pipeline.results_root(cfg))
    assert pd.read_parquet(sample["path"]).shape[0] == 8
    cell = pipeline.plan_scoring_cells(cfg, [model], {"arithmetic": sample})[0]
    loads = len(pipeline.MODEL_LOADS)
    rec = pipeline.score_cell(cell)
    rec2 = pipeline.score_cell(cell)  # same process: the cached model is reused
    assert rec["model_loaded"] is True and rec2["model_loaded"] is False and len(pipeline.MODEL_LOADS) == loads + 1
    assert rec["identity"]["sha256"] and rec["model_identity"] == model["identity_key"]
    types = pd.read_parquet(rec["files"]["types"])
    assert sorted(types["type"]) == sorted(t["type"] for t in rec["types"]) and len(types) == 7
    assert (types["cell_key"] == cell["cell_key"]).all() and (types["sample_hash"] == sample["sample_hash"]).all()
    assert json.loads(open(rec["files"]["placement"]).read())["types"] == rec["placement"]["types"]
    assert pipeline.cell_done(cell)
    table = pipeline.scoring_summary([rec])
    assert list(table.columns[:2]) == ["model", "task"] and "placement" in table.columns
    assert pipeline.markdown_table(table).startswith("| model | task |")


def test_sweep_cli_dry_run_validates_and_applies_overrides(capsys, tmp_path):
    assert main(["sweep", "deploy/sweeps/quickstart.yaml", "--set", "sampling.n_samples=5", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sampling"]["n_samples"] == 5 and out["finetune"]["arms"] == ["plop", "attn", "mlp"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: [m]\ntasks: [arithmetic]\nsampling: {n_sample: 3}\n")
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    assert "sampling.n_sample: unknown field" in capsys.readouterr().err


@pytest.mark.parametrize("path", ["deploy/sweeps/quickstart.yaml", "deploy/sweeps/score-families.yaml"])
def test_shipped_sweep_configs_validate(path):
    cfg = load_sweep_config(path)
    assert cfg.models and cfg.tasks
