"""docs/config.md is generated from the schema (`plop config docs`) and must be current; every field has a
description, type and default in it."""

from __future__ import annotations

from pathlib import Path

from plop_core.cli import main
from plop_core.cli.config import _sections, config_reference
from plop_core.config import SweepConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_docs_config_md_is_current():
    assert DOC.read_text() == config_reference(), \
        "docs/config.md is out of date: regenerate it with `plop config docs > docs/config.md`"


def test_every_field_is_documented_with_a_description():
    text = config_reference()
    undocumented = []
    for path, model, _ in _sections(SweepConfig, ""):
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            if not field.description:
                undocumented.append(key)
            assert f"| `{key}` |" in text, key
    assert not undocumented, f"add description= to these fields in plop_core/config.py: {undocumented}"
    assert "| `finetune.lora.r` | int | `16` | >= 1 | LoRA rank of the reference (plop) arm |" in text
    assert "| `models[].id` | str | **required** |" in text
    assert "when `finetune` is left out its defaults, except `method: \"none\"`" in text


def test_cli_prints_and_writes_it(tmp_path, capsys):
    assert main(["config", "docs"]) == 0
    assert capsys.readouterr().out == config_reference()
    assert main(["config", "docs", "--out", str(tmp_path / "config.md")]) == 0
    assert (tmp_path / "config.md").read_text() == config_reference()
