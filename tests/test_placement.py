"""Placement strategies x architectures with real PEFT: adapters land on exactly the placement's modules,
PEFT's trainable count equals `Placement.trainable_params`, budgets match, errors say what to do.

Expected adapters per cell: n_layers (2) x number of chosen types, each type being one module per layer,
EXCEPT Qwen2-MoE whose `down` type is two modules per layer (the dense shared expert's down_proj and the
packed routed experts' down_proj parameter). Packed experts (Mixtral, Qwen-MoE gate_up/down) are adapted
through `target_parameters` and count r * E * (d_in + d_out) parameters each.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest
from peft import LoraConfig, get_peft_model

from plop_core.modules import TYPE_ORDER, discover_candidates
from plop_core.placement import (
    STRATEGIES,
    Placement,
    match_rank,
    placement_from_types,
    select_placement,
)
from tests.test_modules import ARCHS, build
from tests.tiny import tiny_model, tiny_tokenizer

R = 4
K = 2
MODULES_PER_LAYER = {"qwen2_moe": {"down": 2}}
TEXTS = ["Natalia sold clips to 48 of her friends in April.", "How many clips did Natalia sell altogether?",
         "def add(a, b): return a + b", "The premise entails the hypothesis and the cat sleeps."]


def given_scores(disc, nfn):
    """Scores with chosen per-type NFN values (`.types`, `.discovery`): for selection rules on exact inputs
    (published tables, ties). Every other test scores the model for real."""
    return SimpleNamespace(types=pd.DataFrame({"type": list(nfn), "nfn": list(nfn.values())}), discovery=disc)


def scores_for(model):
    """Real scores: score_nfn with the analytic baseline on four short texts (fast, deterministic)."""
    from plop_core.nfn import score_nfn

    return score_nfn(model, tiny_tokenizer(), TEXTS, estimator="analytic", n_bootstrap=20, progress=False)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("arch", ARCHS)
def test_lora_lands_on_exactly_the_placement(arch, strategy):
    model = build(arch)
    scores = scores_for(model) if STRATEGIES[strategy].needs_scores else discover_candidates(model)
    placement = select_placement(scores, strategy, k=K, seed=1)
    per_layer = MODULES_PER_LAYER.get(arch, {})
    expected = 2 * sum(per_layer.get(t, 1) for t in placement.types)
    assert len(placement.candidates) == expected
    if STRATEGIES[strategy].needs_scores:  # the k lowest (highest) type-NFN of the placeable types
        nfn = dict(zip(scores.types["type"], scores.types["nfn"]))
        ranked = sorted(nfn, key=lambda t: (nfn[t], TYPE_ORDER.index(t)), reverse=False)
        want = ranked[:K] if strategy == "plop" else sorted(nfn, key=lambda t: (-nfn[t], TYPE_ORDER.index(t)))[:K]
        assert set(placement.types) == set(want)
    regex = placement.to_lora_config(r=R, target_style="regex")
    if placement.target_modules:  # the regex full-matches exactly the target modules, nothing else
        hit = {n for n, _ in model.named_modules() if re.fullmatch(regex.target_modules, n)}
        assert hit == set(placement.target_modules)
        assert set(placement.check_targets(regex, model)) == hit  # PEFT's own matching rule agrees
    cfg = placement.to_lora_config(r=R)  # a list of exact names here (few modules)
    if placement.target_modules:
        assert cfg.target_modules == set(placement.target_modules)
    peft_model = get_peft_model(model, cfg)
    report = placement.match_report(peft_model)
    assert report["adapted"].all() and len(report) == expected and report["in_placement"].all()
    trainable, _ = peft_model.get_nb_trainable_parameters()
    # a SEQ_CLS model (BERT here) also trains its classifier head (PEFT's modules_to_save), not LoRA
    head = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad and "modules_to_save" in n)
    assert (head > 0) == (cfg.task_type == "SEQ_CLS")
    assert trainable - head == placement.trainable_params(R) == int(report["lora_params"].sum())


def test_strategy_mapping_on_fused_encoder_and_moe_models():
    def types(arch, strategy):
        return select_placement(discover_candidates(build(arch)), strategy).types

    assert select_placement(discover_candidates(build("llama")), "attn", k=None).k is None
    assert types("llama", "attn") == ("q", "k", "v") and types("llama", "mlp") == ("gate", "up", "down")
    assert types("llama", "peft_default") == ("q", "v") and len(types("llama", "all")) == 7
    assert types("phi3", "attn") == ("qkv",) and types("phi3", "mlp") == ("gate_up", "down")
    assert types("phi3", "peft_default") == ("qkv",) and types("gpt_neox", "peft_default") == ("qkv",)
    assert types("gpt2", "mlp") == ("up", "down") and types("bert", "mlp") == ("up", "down")
    assert types("bert", "attn") == ("q", "k", "v") and types("bert", "peft_default") == ("q", "v")
    assert types("mixtral", "mlp") == ("gate_up", "down")
    assert types("qwen2_moe", "mlp") == ("gate", "up", "gate_up", "down")


def test_plop_golden_and_ties():
    disc = discover_candidates(tiny_model("llama"))
    decreasing = {t: 2.0 - 0.1 * i for i, t in enumerate(disc.types)}  # NFN falls along q k v o gate up down
    assert select_placement(given_scores(disc, decreasing), "plop", k=3).types == ("gate", "up", "down")
    assert select_placement(given_scores(disc, decreasing), "plop_inverse", k=3).types == ("q", "k", "v")
    paper = {"q": 2.58, "k": 2.63, "gate": 1.40, "up": 1.11, "down": 1.05, "v": 0.97, "o": 0.90}  # Llama-3.2-1B
    p = select_placement(given_scores(disc, paper), "plop", k=3)
    assert p.types == ("v", "o", "down") and p.nfn == paper and p.k == 3
    ties = {t: 1.0 for t in disc.types}
    assert select_placement(given_scores(disc, ties), "plop", k=2).types == ("q", "k")  # canonical order


def test_random_is_seeded():
    disc = discover_candidates(tiny_model("llama"))
    draws = {select_placement(disc, "random", k=3, seed=s).types for s in range(8)}
    assert select_placement(disc, "random", k=3, seed=5) == select_placement(disc, "random", k=3, seed=5)
    assert len(draws) > 1 and all(len(d) == 3 for d in draws)


def test_match_rank_budget():
    disc = discover_candidates(tiny_model("llama"))
    plop = placement_from_types(disc, ["o", "v", "down"])
    attn = placement_from_types(disc, "q,k,v")
    per = attn.trainable_params(1)
    assert per == 2 * ((64 + 64) + (64 + 32) * 2)  # two layers of q (64->64), k and v (64->32)
    target = plop.trainable_params(16)
    assert match_rank(attn, target) == round(target / per)
    assert match_rank(plop, target) == 16
    assert match_rank(attn, 1.5 * per) == 1  # a tie goes to the lower rank
    assert match_rank(attn, 10**9, max_rank=64) == 64
    # target / per = 13312 / 640 = 20.8: of the allowed ranks, 16 is closest; of [1, 2, 64], 2 (18.8 < 43.2)
    assert target == 13312 and match_rank(attn, target, ranks=[8, 16, 32]) == 16
    assert match_rank(attn, target, ranks=[1, 2, 64]) == 2
    with pytest.raises(ValueError, match="positive"):
        match_rank(attn, 0)


def test_dict_round_trip_is_json():
    for arch in ("gpt_neox", "mixtral"):
        p = select_placement(scores_for(build(arch)), "plop", k=3)
        d = json.loads(json.dumps(p.to_dict()))
        back = Placement.from_dict(d)
        assert back == p and back.nfn == p.nfn and d["trainable_params_per_rank"] == p.trainable_params(1)


def test_lora_config_fields():
    gpt2 = select_placement(discover_candidates(build("gpt2")), "all").to_lora_config(r=8)
    assert gpt2.fan_in_fan_out and gpt2.lora_alpha == 16 and gpt2.r == 8
    mix = select_placement(discover_candidates(build("mixtral")), "mlp")
    cfg = mix.to_lora_config(r=2, lora_alpha=5)
    assert sorted(cfg.target_parameters) == sorted(mix.target_parameters) and not mix.target_modules
    assert cfg.lora_alpha == 5
    with pytest.raises(ValueError, match="lora_dropout=0.0"):
        mix.to_lora_config(r=2, lora_dropout=0.05)
    with pytest.raises(ValueError, match=">= 1"):
        mix.to_lora_config(r=0)


def test_match_report_raises_on_missing_and_extra_adapters():
    disc = discover_candidates(tiny_model("llama"))
    qv = placement_from_types(disc, ["q", "v"])
    with pytest.raises(ValueError, match=r"outside the placement"):
        qv.match_report(get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules="all-linear")))
    with pytest.raises(ValueError, match=r"got no LoRA adapter"):
        qv.match_report(get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"])))


def test_bad_input_errors():
    disc = discover_candidates(tiny_model("llama"))
    scores = scores_for(tiny_model("llama"))
    with pytest.raises(ValueError, match=r"unknown placement strategy 'best'; known: plop, plop_inverse"):
        select_placement(scores, "best")
    for k in (0, 8, 2.5):
        with pytest.raises(ValueError, match=r"must be an integer in 1\.\.7"):
            select_placement(scores, "plop", k=k)
    with pytest.raises(ValueError, match=r"no per-type table"):
        select_placement(SimpleNamespace(types=None, discovery=disc), "plop")
    with pytest.raises(ValueError, match=r"needs NFN scores"):
        select_placement(disc, "plop")
    with pytest.raises(ValueError, match=r"no \.discovery"):
        select_placement(SimpleNamespace(types=scores.types), "attn")
    partial = SimpleNamespace(types=scores.types.iloc[:3], discovery=disc)
    with pytest.raises(ValueError, match=r"lack a finite NFN"):
        select_placement(partial, "plop")
    phi = discover_candidates(build("phi3"))
    with pytest.raises(ValueError, match=r"part of the fused module type 'qkv'.*place 'qkv'"):
        placement_from_types(phi, ["q", "o"])
    with pytest.raises(ValueError, match=r"unknown module type 'x'.*placeable: q, k, v"):
        placement_from_types(disc, "x")
    with pytest.raises(ValueError, match=r"no module types given"):
        placement_from_types(disc, [])
    with pytest.raises(ValueError, match=r"not a placement dict"):
        Placement.from_dict({"types": ["q"]})


@pytest.mark.slow
@pytest.mark.parametrize("asset,n_layers,auto", [("smollm2-135m-instruct", 30, "AutoModelForCausalLM"),
                                                  ("gemma3-270m", 18, "AutoModelForCausalLM"),
                                                  ("minilm-l6", 6, "AutoModel")])
def test_real_offline_models(asset, n_layers, auto):
    """Real checkpoints (when fetched): every layer has its types, PEFT's count equals the placement's."""
    import transformers

    from plop_core.assets import asset_path_or_none

    path = asset_path_or_none(asset)
    if path is None:
        pytest.skip(f"offline asset {asset} not fetched (plop assets fetch {asset})")
    model = getattr(transformers, auto).from_pretrained(path)
    disc = discover_candidates(model)
    want = ["q", "k", "v", "o", "up", "down"] if auto == "AutoModel" else ["q", "k", "v", "o", "gate", "up", "down"]
    assert disc.types == want and disc.layers == list(range(n_layers))
    assert len(disc.candidates) == n_layers * len(want)
    placement = select_placement(disc, "all")
    peft_model = get_peft_model(model, placement.to_lora_config(r=8))
    assert placement.match_report(peft_model)["adapted"].all()
    assert peft_model.get_nb_trainable_parameters()[0] == placement.trainable_params(8)
