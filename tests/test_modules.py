"""Module discovery on the architecture matrix (tiny fixed-seed 2-layer models, no hub, no forward pass).

Golden per-layer roles for every family, exact fused rows proven by what the model computes (zeroing
a part's rows / scaling them), weights as (d_out, d_in), the structural path on a Llama whose leaves
and sub-blocks were renamed, overrides, exclusions and the errors.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from plop_core.modules import Candidate, Part, discover_candidates, get_weight
from tests.tiny import tiny_config, tiny_model

warnings.filterwarnings("ignore", message=".*config.*")

LLAMA_LIKE = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
              "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down"}
ATTN = {k: v for k, v in LLAMA_LIKE.items() if k.startswith("self_attn")}
# per arch: (layer-stack prefix, {name inside a block: type}, {name: kind} for non-linear kinds)
EXPECTED = {
    "llama": ("model.layers", LLAMA_LIKE, {}),
    "qwen2": ("model.layers", LLAMA_LIKE, {}),
    "mistral": ("model.layers", LLAMA_LIKE, {}),
    "qwen3": ("model.layers", LLAMA_LIKE, {}),
    "gemma3": ("model.layers", LLAMA_LIKE, {}),
    "phi3": ("model.layers", {"self_attn.o_proj": "o", "self_attn.qkv_proj": "qkv", "mlp.gate_up_proj": "gate_up",
                              "mlp.down_proj": "down"}, {"self_attn.qkv_proj": "fused", "mlp.gate_up_proj": "fused"}),
    "gpt2": ("transformer.h", {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"},
             {n: "conv1d" for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}),
    "gpt_neox": ("gpt_neox.layers", {"attention.query_key_value": "qkv", "attention.dense": "o",
                                     "mlp.dense_h_to_4h": "up", "mlp.dense_4h_to_h": "down"},
                 {"attention.query_key_value": "fused"}),
    "bert": ("bert.encoder.layer", {"attention.self.query": "q", "attention.self.key": "k",
                                    "attention.self.value": "v", "attention.output.dense": "o",
                                    "intermediate.dense": "up", "output.dense": "down"}, {}),
    "mixtral": ("model.layers", {**ATTN, "mlp.experts.gate_up_proj": "gate_up", "mlp.experts.down_proj": "down"},
                {"mlp.experts.gate_up_proj": "experts", "mlp.experts.down_proj": "experts"}),
    "qwen2_moe": ("model.layers", {**ATTN, "mlp.experts.gate_up_proj": "gate_up", "mlp.experts.down_proj": "down",
                                   "mlp.shared_expert.gate_proj": "gate", "mlp.shared_expert.up_proj": "up",
                                   "mlp.shared_expert.down_proj": "down"},
                  {"mlp.experts.gate_up_proj": "experts", "mlp.experts.down_proj": "experts"}),
    "qwen3_moe": ("model.layers", {**ATTN, "mlp.experts.gate_up_proj": "gate_up", "mlp.experts.down_proj": "down"},
                  {"mlp.experts.gate_up_proj": "experts", "mlp.experts.down_proj": "experts"}),
}
ARCHS = list(EXPECTED)


def build(arch: str, seed: int = 0) -> nn.Module:
    if arch == "bert":
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(seed)
        return AutoModelForSequenceClassification.from_config(tiny_config("bert")).eval()
    return tiny_model(arch, seed=seed)


def _no_forward(model):
    def boom(*_):
        raise AssertionError("discovery ran a forward pass")
    return [m.register_forward_pre_hook(boom) for m in model.modules()]


@pytest.mark.parametrize("arch", ARCHS)
def test_discovered_types_per_layer(arch):
    model = build(arch)
    hooks = _no_forward(model)
    disc = discover_candidates(model)
    for h in hooks:
        h.remove()
    stack, roles, kinds = EXPECTED[arch]
    assert disc.stack == stack and disc.n_layers == 2 and disc.layers == [0, 1]
    for layer in (0, 1):
        got = {c.name.removeprefix(f"{stack}.{layer}."): c.type for c in disc.candidates if c.layer == layer}
        assert got == roles
        for c in disc.candidates:
            if c.layer == layer:
                rel = c.name.removeprefix(f"{stack}.{layer}.")
                assert c.kind == kinds.get(rel, "linear"), rel
    names = {c.name for c in disc.candidates}
    assert not any(re.search(r"lm_head|embed|wte|wpe|classifier|pooler|(^|\.)gate$|router", n) for n in names)
    report = disc.report()
    for t in disc.types:
        assert f"  {t} " in report
    assert len(names) == len(disc.candidates)


@pytest.mark.parametrize("arch", ARCHS)
def test_get_weight_is_what_the_module_computes(arch):
    model = build(arch)
    disc = discover_candidates(model)
    x = torch.randn(3, disc.dims.hidden, generator=torch.Generator().manual_seed(0))
    for c in disc.candidates:
        w = get_weight(model, c)
        assert w.dtype == torch.float32
        if c.kind == "experts":
            assert w.shape == (c.n_experts, c.d_out, c.d_in)
            raw = getattr(model.get_submodule(c.module_name), c.param)
            xin = torch.randn(3, c.d_in)
            assert torch.allclose(xin @ w[1].T, nn.functional.linear(xin, raw[1]), atol=1e-6)
            continue
        assert w.shape == (c.d_out, c.d_in)
        mod = model.get_submodule(c.name)
        xin = torch.randn(3, c.d_in)
        bias = mod.bias if getattr(mod, "bias", None) is not None else 0
        assert torch.allclose(mod(xin) - bias, xin @ w.T, atol=1e-5), c.name
    del x


def test_fused_parts_rows_golden():
    hd = 16
    phi = {c.type: c for c in discover_candidates(build("phi3")).candidates if c.layer == 0}
    assert [(p.type, p.rows) for p in phi["qkv"].parts] == [
        ("q", tuple(range(64))), ("k", tuple(range(64, 96))), ("v", tuple(range(96, 128)))]
    assert [(p.type, p.runs()) for p in phi["gate_up"].parts] == [("gate", [(0, 128)]), ("up", [(128, 256)])]
    gpt2 = {c.type: c for c in discover_candidates(build("gpt2")).candidates if c.layer == 0}
    assert [p.runs() for p in gpt2["qkv"].parts] == [[(0, 64)], [(64, 128)], [(128, 192)]]
    neox = {c.type: c for c in discover_candidates(build("gpt_neox")).candidates if c.layer == 0}
    q, k, v = neox["qkv"].parts
    assert q.runs() == [(h * 3 * hd, h * 3 * hd + hd) for h in range(4)]  # interleaved per head
    assert k.runs() == [(h * 3 * hd + hd, h * 3 * hd + 2 * hd) for h in range(4)]
    assert sorted(q.rows + k.rows + v.rows) == list(range(192))
    mix = {c.type: c for c in discover_candidates(build("mixtral")).candidates if c.layer == 0}
    assert [p.runs() for p in mix["gate_up"].parts] == [[(0, 96)], [(96, 192)]]


def _capture_input(model, name, ids):
    seen = {}

    def keep(mod, args, out):
        seen.setdefault("x", args[0].detach())
    h = model.get_submodule(name).register_forward_hook(keep)
    with torch.no_grad():
        model(input_ids=ids)
    h.remove()
    return seen["x"]


def _scale_rows(model, cand, rows, factor):
    mod = model.get_submodule(cand.module_name)
    with torch.no_grad():
        if cand.param:
            getattr(mod, cand.param)[:, list(rows), :] *= factor
            return
        w = mod.weight
        if cand.kind == "conv1d":
            w[:, list(rows)] *= factor
        else:
            w[list(rows), :] *= factor
        if getattr(mod, "bias", None) is not None:
            mod.bias[list(rows)] *= factor


@pytest.mark.parametrize("arch", ["phi3", "gpt2", "gpt_neox"])
def test_qkv_parts_are_the_rows_the_model_uses(arch):
    """Zeroing the q rows or the k rows gives the same (uniform) attention; zeroing v rows zeroes o's input."""
    ids = torch.randint(4, 400, (1, 9), generator=torch.Generator().manual_seed(1))
    outs = {}
    for part in ("none", "q", "k", "v"):
        model = build(arch)
        cands = {c.type: c for c in discover_candidates(model).candidates if c.layer == 0}
        if part != "none":
            _scale_rows(model, cands["qkv"], next(p for p in cands["qkv"].parts if p.type == part).rows, 0.0)
        outs[part] = _capture_input(model, cands["o"].name, ids)
    assert torch.allclose(outs["q"], outs["k"], atol=1e-6)
    assert not torch.allclose(outs["q"], outs["none"], atol=1e-3)
    assert torch.count_nonzero(outs["v"]) == 0


@pytest.mark.parametrize("arch", ["phi3", "mixtral"])
def test_gate_up_parts_are_the_rows_the_model_uses(arch):
    """Doubling the up rows doubles what down receives (act(gate) * up is linear in up); gate rows do not."""
    ids = torch.randint(4, 400, (1, 9), generator=torch.Generator().manual_seed(2))
    outs = {}
    for part in ("none", "gate", "up"):
        model = build(arch)
        cands = {c.type: c for c in discover_candidates(model).candidates if c.layer == 0}
        gu = cands["gate_up"]
        if part != "none":
            _scale_rows(model, gu, next(p for p in gu.parts if p.type == part).rows, 2.0)
        if gu.param:  # packed experts: the experts' output is linear in what each expert's down receives
            seen = {}

            def keep(mod, args, out, seen=seen):
                seen.setdefault("y", out.detach())
            h = model.get_submodule(gu.module_name).register_forward_hook(keep)
            with torch.no_grad():
                model(input_ids=ids)
            h.remove()
            outs[part] = seen["y"]
        else:
            outs[part] = _capture_input(model, cands["down"].name, ids)
    assert torch.allclose(outs["up"], 2 * outs["none"], atol=1e-5)
    assert not torch.allclose(outs["gate"], 2 * outs["none"], atol=1e-3)


def _rename_children(module: nn.Module, mapping: dict[str, str]) -> None:
    """Rename child modules in place; the class keeps working through read-only aliases of the old names."""
    module._modules = {mapping.get(k, k): v for k, v in module._modules.items()}
    aliases = {old: property(lambda self, new=new: self._modules[new]) for old, new in mapping.items()}
    module.__class__ = type(f"Renamed{type(module).__name__}", (type(module),), aliases)


def renamed_llama():
    """A tiny Llama whose leaves AND sub-blocks carry names no hint knows (a family nobody listed)."""
    model = tiny_model("llama")
    for layer in model.model.layers:
        _rename_children(layer.self_attn, {"q_proj": "a1", "k_proj": "a2", "v_proj": "a3", "o_proj": "a4"})
        _rename_children(layer.mlp, {"gate_proj": "m1", "up_proj": "m2", "down_proj": "m3"})
        _rename_children(layer, {"self_attn": "mixer", "mlp": "chan"})
    return model


def test_unlisted_family_roles_from_structure():
    model = renamed_llama()
    disc = discover_candidates(model)
    got = {c.name.removeprefix(f"model.layers.{c.layer}."): c.type for c in disc.candidates}
    assert got == {"mixer.a1": "q", "mixer.a2": "k", "mixer.a3": "v", "mixer.a4": "o",
                   "chan.m1": "gate", "chan.m2": "up", "chan.m3": "down"}
    assert len(disc.candidates) == 14
    assert "definition order" in disc.report()
    with torch.no_grad():  # the renamed model still runs
        model(input_ids=torch.tensor([[5, 6, 7]]))
    # weights agree with the plain Llama of the same seed
    plain = {c.type: get_weight(tiny_model("llama"), c) for c in discover_candidates(tiny_model("llama")).candidates
             if c.layer == 1}
    for c in disc.candidates:
        if c.layer == 1:
            assert torch.equal(get_weight(model, c), plain[c.type])


def test_overrides_skip_regex_and_leaf_names():
    model = tiny_model("llama")
    disc = discover_candidates(model, overrides={"down_proj": "skip", r"model\.layers\.1\.mlp\.up_proj": "skip"})
    assert [c.type for c in disc.candidates if c.layer == 1] == ["q", "k", "v", "o", "gate"]
    assert "down" not in disc.types
    assert sum("skipped by override" in r for _, r in disc.unmatched) == 3
    swapped = discover_candidates(renamed_llama(), overrides={"m1": "up", "chan.m2": "gate"})
    assert {c.name.rsplit(".", 1)[-1]: c.type for c in swapped.candidates if c.layer == 0}["m1"] == "up"
    assert {c.name.rsplit(".", 1)[-1]: c.type for c in swapped.candidates if c.layer == 0}["m2"] == "gate"


def test_excluded_modules_are_reported():
    mix = discover_candidates(build("mixtral"))
    assert ("model.layers.0.mlp.gate", "router (routes tokens to experts; never a candidate)") in mix.unmatched
    qmoe = dict(discover_candidates(build("qwen2_moe")).unmatched)
    assert qmoe["model.layers.1.mlp.shared_expert_gate"].startswith("scalar gate")
    bert = dict(discover_candidates(build("bert")).unmatched)
    assert {"bert.pooler.dense", "classifier"} <= set(bert)
    assert "lm_head" in dict(discover_candidates(build("gpt2")).unmatched)


def test_errors_name_the_problem_and_the_fix():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"unknown type; use one of"):
        discover_candidates(model, overrides={"q_proj": "query"})
    with pytest.raises(ValueError, match=r"matched no linear-like module"):
        discover_candidates(model, overrides={"wq": "q"})
    with pytest.raises(ValueError, match=r"output head/embedding"):
        discover_candidates(model, overrides={"lm_head": "o"})
    with pytest.raises(ValueError, match=r"neither a leaf name nor a valid regex"):
        discover_candidates(model, overrides={"q_proj[": "q"})
    with pytest.raises(ValueError, match=r"MoE router"):
        discover_candidates(build("mixtral"), overrides={r"model\.layers\.\d+\.mlp\.gate": "gate"})
    flat = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with pytest.raises(ValueError, match=r"no placement candidates found.*overrides"):
        discover_candidates(flat)
    ok = discover_candidates(flat, overrides={"0": "up", "2": "down"})
    assert [(c.name, c.type) for c in ok.candidates] == [("0", "up"), ("2", "down")]


def test_candidate_and_part_round_trip():
    for c in discover_candidates(build("gpt_neox")).candidates + discover_candidates(build("mixtral")).candidates:
        assert Candidate.from_dict(c.to_dict()) == c
    assert Part.from_runs("q", [(0, 2), (5, 6)]).rows == (0, 1, 5)


def test_thirty_layer_model_no_forward():
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 30
    model = AutoModelForCausalLM.from_config(cfg)
    hooks = _no_forward(model)
    disc = discover_candidates(model)
    assert len(disc.candidates) == 30 * 7 and disc.layers == list(range(30))
    for h in hooks:
        h.remove()


class _Expert(nn.Module):
    def __init__(self, h, i):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False), nn.Linear(i, h)


class _Block(nn.Module):
    def __init__(self, h=32, i=48, e=3):
        super().__init__()
        self.attn = nn.Module()
        for n, o in (("wq", h), ("wk", 16), ("wv", 16)):
            setattr(self.attn, n, nn.Linear(h, o))
        self.attn.wo = nn.Linear(h, h)
        self.moe = nn.Module()
        self.moe.gate = nn.Linear(h, e, bias=False)
        self.moe.experts = nn.ModuleList(_Expert(h, i) for _ in range(e))


class _Net(nn.Module):
    """A config-less model with one nn.Linear per expert (kind "expert") and a Linear router."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 32)
        self.blocks = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(32, 10)


def test_per_expert_linears_without_config():
    from peft import get_peft_model

    from plop_core.placement import select_placement

    disc = discover_candidates(_Net())
    roles = {c.name.removeprefix(f"blocks.{c.layer}."): (c.type, c.kind) for c in disc.candidates}
    assert roles["attn.wq"] == ("q", "linear") and roles["attn.wo"] == ("o", "linear")
    assert {roles[f"moe.experts.{e}.{w}"] for e in range(3) for w in ("w1", "w3", "w2")} == {
        ("gate", "expert"), ("up", "expert"), ("down", "expert")}
    assert roles["moe.experts.2.w2"] == ("down", "expert") and len(disc.candidates) == 2 * (4 + 9)
    unmatched = dict(disc.unmatched)
    assert unmatched["blocks.0.moe.gate"].startswith("router") and "head" in unmatched
    placement = select_placement(disc, "mlp")
    peft_model = get_peft_model(_Net(), placement.to_lora_config(r=2))
    assert len(placement.match_report(peft_model)) == 18
    assert peft_model.get_nb_trainable_parameters()[0] == placement.trainable_params(2)
