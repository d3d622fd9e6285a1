"""The sweep flow's parameters (flows/params.py) without a server: what `config`, `sweep` and `overrides`
resolve to, that a sweep name cannot reach outside deploy/sweeps/, and the schema the server will store.
tests/test_deployment.py drives the same parameters through `prefect deployment run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.params import SWEEPS_DIR, run_name, sweep_config
from plop_core.config import ConfigError, load_sweep_config, named_sweep_path, sweep_names

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["sampling.n_samples=8", "tasks=[arithmetic]", "models=[{id: some/model, name: m}]",
             "finetune.seeds=[0, 1]"]


def test_committed_sweeps_are_the_enum_and_all_validate():
    names = sweep_names(SWEEPS_DIR)
    assert names == sorted(p.stem for p in (ROOT / "deploy" / "sweeps").glob("*.yaml"))
    assert {"score-smollm2", "benchmark-gemma3"} <= set(names)  # the schedules of deploy/prefect.yaml
    for name in names:
        assert sweep_config(None, name).name == load_sweep_config(SWEEPS_DIR / f"{name}.yaml").name


@pytest.mark.parametrize("name", ["score-smollm2", "benchmark-gemma3", "quickstart"])
def test_sweep_and_overrides_mean_exactly_plop_sweep_set(name):
    # `--param sweep=NAME --param overrides=[...]` == `plop sweep deploy/sweeps/NAME.yaml --set ...`
    got = sweep_config(None, name, OVERRIDES)
    assert got == load_sweep_config(ROOT / "deploy" / "sweeps" / f"{name}.yaml", OVERRIDES)
    assert got.sampling.n_samples == 8 and got.tasks == ["arithmetic"] and got.models[0].label == "m"


def test_partial_config_takes_defaults_and_config_wins_over_sweep():
    partial = {"models": ["tiny"], "tasks": ["arithmetic"], "sampling": {"n_samples": 8}}
    cfg = sweep_config(partial, "score-smollm2", ["scorer.n_probe=16"])
    assert cfg.name == "sweep" and cfg.models[0].id == "tiny"  # the YAML named by `sweep` is not used
    assert cfg.sampling.n_samples == 8 and cfg.sampling.max_length == 256  # given, then the default
    assert cfg.scorer.n_probe == 16 and cfg.finetune.method == "none" and cfg.selection.k == 3
    assert sweep_config(cfg, None) == cfg  # a validated SweepConfig (what Prefect passes) round-trips


@pytest.mark.parametrize("name, why", [
    ("../prefect", "must be the bare name of a file in"),
    ("/etc/passwd", "must be the bare name of a file in"),
    ("sweeps/quickstart", "must be the bare name of a file in"),
    ("quickstrat", "is not in"),
])
def test_sweep_name_stays_inside_its_folder(name, why):
    with pytest.raises(ConfigError, match="known: benchmark-gemma3, quickstart") as e:
        sweep_config(None, name)
    assert why in str(e.value) and str(e.value).count("\n") == 0  # one line naming the fix
    if name == "quickstrat":
        assert "did you mean 'quickstart'" in str(e.value)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    folder = tmp_path / "sweeps"
    folder.mkdir()
    outside = tmp_path / "outside.yaml"
    outside.write_text("name: x\nmodels: [m]\ntasks: [arithmetic]\n")
    (folder / "evil.yaml").symlink_to(outside)
    with pytest.raises(ConfigError, match="links outside"):
        named_sweep_path("evil", folder)


def test_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"models: required field is missing"):
        sweep_config({"tasks": ["arithmetic"]}, None)  # the crash of issue 9, now a one-line error
    with pytest.raises(ConfigError, match=r"sampling.n_sample: unknown field"):
        sweep_config(None, "score-smollm2", ["sampling.n_sample=8"])
    with pytest.raises(ConfigError, match=r"give the parameter `sweep` .* or `config`"):
        sweep_config(None, None)


def test_run_name_never_raises():
    assert run_name({"sweep": "score-smollm2"}) == "sweep-score-smollm2"
    assert run_name({"config": {"name": "x", "models": ["m"], "tasks": ["arithmetic"]}}) == "sweep-x"
    assert run_name({"config": {"tasks": ["arithmetic"]}}) == "sweep-config"  # was KeyError: 'name'
    assert run_name({"sweep": "score-smollm2", "overrides": ["name=nightly"]}) == "sweep-nightly"


def test_parameter_schema_is_a_typed_form():
    """What `prefect deploy` stores as parameter_openapi_schema: every field typed with its help text (the
    UI renders a form from it, and the server enforces it when a run is created)."""
    from prefect.utilities.callables import parameter_schema

    from flows.sweep import plop_sweep

    schema = parameter_schema(plop_sweep).model_dump_for_openapi()
    props, defs = schema["properties"], schema["definitions"]
    assert list(props) == ["config", "sweep", "overrides"] and not schema.get("required")
    assert props["config"]["anyOf"][0] == {"$ref": "#/definitions/SweepConfig"}
    assert props["sweep"]["anyOf"][0]["enum"] == sweep_names(SWEEPS_DIR)
    assert props["overrides"]["anyOf"][0]["items"]["pattern"].startswith("^")
    assert all(p.get("description") for p in props.values())
    assert defs["SweepConfig"]["required"] == ["models", "tasks"]
    for name, d in defs.items():
        assert d["type"] == "object" and d["additionalProperties"] is False, name
        for field, spec in d["properties"].items():
            typed = any(k in spec for k in ("type", "enum", "$ref", "anyOf", "allOf"))
            assert typed and spec.get("description"), f"{name}.{field}: {json.dumps(spec)[:200]}"
