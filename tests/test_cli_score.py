"""`plop score` on a tiny model saved by path and a local JSONL task: files, output, and bad input."""

import json

import pandas as pd
import pytest

from plop_core.cli import main


@pytest.fixture(scope="module")
def data_file(tmp_path_factory, texts):
    p = tmp_path_factory.mktemp("data") / "notes.jsonl"
    p.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts * 3)))
    return p


def _score(llama_dir, data_file, out, *extra):
    return main(["score", "--model", str(llama_dir), "--data", str(data_file), "--n-samples", "12",
                 "--max-length", "32", "--n-bootstrap", "20", "--out", str(out), "--no-progress", *extra])


def test_score_writes_tables_placement_and_adapter_config(llama_dir, data_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert _score(llama_dir, data_file, out, "--k", "2", "--r", "4") == 0
    printed = capsys.readouterr().out
    assert "NFN by module type" in printed and "placement (plop)" in printed
    modules = pd.read_parquet(out / "modules.parquet")
    types = pd.read_parquet(out / "types.parquet")
    assert len(modules) == 2 * 7 and set(types["type"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    placement = json.loads((out / "placement.json").read_text())
    lowest = list(types.sort_values("nfn")["type"][:2])
    assert sorted(placement["types"]) == sorted(lowest)
    from peft import LoraConfig  # PEFT reads the folder as it is

    cfg = LoraConfig.from_pretrained(str(out))
    assert cfg.r == 4 and cfg.lora_alpha == 8 and cfg.task_type == "CAUSAL_LM"
    assert sorted(cfg.target_modules) == sorted(json.loads((out / "placement.json").read_text())["target_modules"])
    assert (out / "nfn_heatmap.png").stat().st_size > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".") or ".tmp" in p.name]


@pytest.mark.parametrize("extra, message", [
    (["--max-length", "0"], "--max-length 0: Input should be greater than or equal to 1"),
    (["--n-samples", "500"], "allow_smaller"),
    (["--k", "9"], "k=9"),
])
def test_score_bad_input_is_a_clear_error_and_writes_nothing(llama_dir, data_file, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert _score(llama_dir, data_file, out, *extra) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert not out.exists() or not any(out.iterdir())


def test_score_unknown_task_and_model(llama_dir, tmp_path, capsys):
    assert main(["score", "--model", str(llama_dir), "--data", "no_such_task", "--out", str(tmp_path)]) == 2
    assert "known tasks: arithmetic" in capsys.readouterr().err
    assert main(["score", "--model", "no-such-model", "--data", "arithmetic", "--out", str(tmp_path)]) == 2
    assert "plop assets list" in capsys.readouterr().err


def test_unknown_estimator_and_strategy_are_rejected_by_argparse(capsys):
    for flag, value in (("--estimator", "magic"), ("--strategy", "best")):
        with pytest.raises(SystemExit) as e:
            main(["score", "--model", "m", "--data", "d", flag, value])
        assert e.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_help_of_every_subcommand(capsys):
    from flows.cli import main as plop  # the console script: the library commands plus `plop sweep`

    for cmd in ("score", "assets", "tasks", "compare", "sweep"):
        with pytest.raises(SystemExit) as e:
            plop([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: plop " + cmd in capsys.readouterr().out
