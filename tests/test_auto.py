"""`auto_lora_config`: the same answer as the five separate calls, golden choices on the tiny Llama, a report
that carries the evidence, and early, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from peft import PeftModelForCausalLM, get_peft_model

import plop_core
from plop_core import auto_lora_config
from plop_core.data import sample_task
from plop_core.nfn import score_nfn
from plop_core.placement import select_placement
from tests.tiny import CORPUS, tiny_model, tiny_tokenizer

TEXTS = CORPUS[:8]


@pytest.fixture(scope="module")
def tiny_auto():
    return auto_lora_config(tiny_model("llama"), tiny_tokenizer(), TEXTS, k=3, r=4, n_bootstrap=200)


def test_same_answer_as_the_separate_calls(tiny_auto):
    config, report = tiny_auto
    model, tok = tiny_model("llama"), tiny_tokenizer()
    scores = score_nfn(model, tok, TEXTS, n_bootstrap=200, progress=False)
    placement = select_placement(scores, "plop", k=3)
    assert report.placement == placement and report.placement.nfn == placement.nfn
    np.testing.assert_allclose(report.types["nfn"], scores.types["nfn"], rtol=1e-12)
    np.testing.assert_allclose(report.types["nfn_ci_low"], scores.types["nfn_ci_low"], rtol=1e-12)
    assert report.stability == scores.stability(3)
    assert config == placement.to_lora_config(r=4)


def test_golden_choice_and_report_on_the_tiny_llama(tiny_auto):
    config, report = tiny_auto
    assert report.placement.types == ("k", "o", "gate")  # fixed seed 0 model, probe estimator, seed 0
    assert report.stability == pytest.approx(0.69)  # resamples redraw each baseline within its MC error too
    assert config.r == 4 and config.lora_alpha == 8 and config.task_type == "CAUSAL_LM"
    assert config.target_modules == set(report.placement.target_modules) and len(config.target_modules) == 6
    assert list(report.types.loc[report.types["chosen"], "type"]) == ["k", "o", "gate"]
    assert report.token_stats["n_texts"] == 8 and report.token_stats["n_truncated"] == 0
    assert report.scoring["n_sequences"] == 8 and report.estimator == "probe"
    assert report.lora["trainable_params"] == report.placement.trainable_params(4) == 3328
    text = str(report)
    assert text.splitlines()[0].startswith("PLoP placement: plop k=3 -> k, o, gate  (your texts, 8 sequences")
    assert "o        0.966     [0.917, 1.007]       0.94..0.99  <- LoRA" in text  # intervals include baseline MC error
    assert "selection stability: 69% of 200 bootstrap resamples" in text and repr(report) == text
    json.dumps(report.to_dict())  # JSON-able
    peft_model = get_peft_model(tiny_model("llama"), config)
    assert isinstance(peft_model, PeftModelForCausalLM) and report.placement.match_report(peft_model)["adapted"].all()


def test_task_name_with_n_and_seed_and_save(tmp_path):
    config, report = auto_lora_config(tiny_model("llama"), tiny_tokenizer(), "arithmetic", k=2, r=2, n=16, seed=3,
                                      n_bootstrap=50, estimator="analytic", target_style="regex")
    assert report.data["task"] == "arithmetic" and report.data["n"] == 16
    assert report.data["sample_hash"] == sample_task("arithmetic", n=16, seed=3).sample_hash
    assert isinstance(config.target_modules, str) and report.lora["target_modules"] == config.target_modules
    paths = report.save(tmp_path)
    assert set(paths) == {"adapter_config", "targets", "report"}
    saved = json.loads(paths["report"].read_text())
    assert saved["placement"]["types"] == list(report.placement.types) and saved["estimator"] == "analytic"


def test_loaded_model_needs_no_separate_tokenizer():
    from types import SimpleNamespace

    lm = SimpleNamespace(model=tiny_model("llama"), tokenizer=tiny_tokenizer())
    config, report = auto_lora_config(lm, None, TEXTS, k=1, r=2, n_bootstrap=0)
    assert len(report.placement.types) == 1 and np.isnan(report.stability)
    assert "selection stability" not in str(report)


@pytest.mark.parametrize("kwargs, message", [
    (dict(k=9), r"k=9 must be an integer in 1\.\.7"),
    (dict(strategy="best"), r"unknown placement strategy 'best'"),
    (dict(texts_or_task=[1, 2]), r"a non-empty list of strings; got list with a int at index 0"),
    (dict(texts_or_task="no_such_task"), r"no_such_task"),
    (dict(tokenizer=None), r"tokenizer is None"),
])
def test_bad_input_fails_before_scoring(kwargs, message, monkeypatch):
    import plop_core.nfn

    def boom(*a, **k):
        raise AssertionError("scored before validating")

    monkeypatch.setattr(plop_core.nfn, "score_nfn", boom)
    args = dict(model=tiny_model("llama"), tokenizer=tiny_tokenizer(), texts_or_task=TEXTS)
    args.update(kwargs)
    with pytest.raises((ValueError, KeyError), match=message):
        auto_lora_config(**args)


def test_exported_from_the_package():
    assert "auto_lora_config" in plop_core.__all__ and plop_core.auto_lora_config is auto_lora_config


@pytest.mark.slow
def test_real_smollm2_matches_score_nfn_and_select_placement():
    from plop_core.assets import asset_path_or_none
    from plop_core.models import load_model

    if asset_path_or_none("smollm2-135m-instruct") is None:
        pytest.skip("offline asset smollm2-135m-instruct not fetched (plop assets fetch smollm2-135m-instruct)")
    lm = load_model("smollm2-135m-instruct", progress=False)
    config, report = auto_lora_config(lm.model, lm.tokenizer, "gsm8k", k=3, r=16, n=16, max_length=64,
                                      n_bootstrap=200, estimator="analytic")
    sample = sample_task("gsm8k", n=16, seed=0)
    scores = score_nfn(lm.model, lm.tokenizer, sample.texts, max_length=64, n_bootstrap=200, estimator="analytic",
                       progress=False)
    placement = select_placement(scores, "plop", k=3)
    assert report.placement == placement and report.stability == scores.stability(3)
    np.testing.assert_allclose(report.types["nfn"], scores.types["nfn"], rtol=1e-9)
    assert config.task_type == "CAUSAL_LM" and config.base_model_name_or_path == lm.identity.path
    assert isinstance(config.target_modules, str) and len(placement.candidates) == 90  # 30 layers x 3 types
    assert set(placement.check_targets(config, lm.model)) == set(placement.target_modules)
