"""The one config schema: YAML + overrides, readable validation errors, stable hashes."""


from pathlib import Path

import pytest

from plop_core.config import ConfigError, SweepConfig, apply_overrides, config_hash, load_sweep_config

BASE = {"name": "t", "models": ["smollm2-135m-instruct"], "tasks": ["gsm8k", "arithmetic"]}


def test_models_accept_plain_strings_and_defaults_from_paper():
    cfg = SweepConfig.model_validate(BASE)
    assert cfg.models[0].id == "smollm2-135m-instruct" and cfg.models[0].label == "smollm2-135m-instruct"
    assert cfg.scorer.estimator == "probe" and cfg.selection.k == 3 and cfg.sampling.max_length == 256
    assert cfg.finetune.method == "none"


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nmodels: [a/b]\ntasks: [gsm8k]\nsampling: {n_samples: 16}\n")
    cfg = load_sweep_config(p, ["sampling.n_samples=32", "scorer.estimator=analytic", "selection.k=2"])
    assert (cfg.sampling.n_samples, cfg.scorer.estimator, cfg.selection.k) == (32, "analytic", 2)


@pytest.mark.parametrize(
    "override, field",
    [
        ("scorer.estimator=magic", "scorer.estimator"),
        ("sampling.n_samples=0", "sampling.n_samples"),
        ("sampling.n_sample=5", "sampling.n_sample"),
        ("selection.strategy=best", "selection.strategy"),
    ],
)
def test_validation_errors_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_sweep_config(BASE, [override])
    assert field in str(e.value)


def test_typo_says_unknown_field_and_missing_says_required():
    with pytest.raises(ConfigError, match="unknown field"):
        load_sweep_config({**BASE, "modles": []})
    with pytest.raises(ConfigError, match="models: required field is missing"):
        load_sweep_config({"tasks": ["gsm8k"]})


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_sweep_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep_config(bad)
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["novalue"])


def test_finetune_tasks_must_be_scored_tasks():
    with pytest.raises(ConfigError, match="finetune_tasks"):
        load_sweep_config({**BASE, "finetune_tasks": ["mmlu"]})


def test_config_hash_is_stable_and_sensitive():
    a = SweepConfig.model_validate(BASE)
    b = SweepConfig.model_validate(BASE)
    assert config_hash(a.scorer) == config_hash(b.scorer)
    assert config_hash(a.scorer) != config_hash(a.scorer.model_copy(update={"n_probe": 256}))


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("deploy/sweeps/*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_sweep_configs_validate_and_are_named_after_their_file(path):
    """A committed sweep validates, and its `name` is its file stem (its summary lands in sweeps/<stem>/)."""
    cfg = load_sweep_config(path)
    assert cfg.name == path.stem
