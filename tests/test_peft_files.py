"""Files PEFT loads as they are: adapter_config.json read back by plain PEFT/TRL in a process that never imports
plop; exact target regexes (checked against real module name sets); PEFT task types inferred from the model."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap

import pytest
import transformers as T

from plop_core.modules import discover_candidates
from plop_core.name_patterns import int_regex, names_regex
from plop_core.peft_facts import base_model_facts, peft_task_type
from plop_core.peft_files import write_adapter_config
from plop_core.placement import placement_from_types, select_placement
from tests.tiny import tiny_config, tiny_model

NFN = {"q": 2.0, "k": 2.1, "v": 0.8, "o": 0.9, "gate": 1.3, "up": 1.1, "down": 1.0}

# Runs in a fresh interpreter: PEFT, transformers, TRL and datasets only. Prints one JSON line per folder.
PLAIN_PEFT = textwrap.dedent("""
    import json, sys
    from datasets import Dataset
    from peft import LoraConfig, PeftConfig, PeftModelForCausalLM, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    for out in sys.argv[1:]:
        cfg = LoraConfig.from_pretrained(out)
        generic = PeftConfig.from_pretrained(out)
        base = AutoModelForCausalLM.from_pretrained(cfg.base_model_name_or_path)
        tok = AutoTokenizer.from_pretrained(cfg.base_model_name_or_path)
        model = get_peft_model(base, cfg)
        adapted = sorted(n.removeprefix("base_model.model.").removesuffix(".lora_A")
                         for n, _ in model.named_modules() if n.endswith(".lora_A"))
        rows = [{"prompt": f"What is {a} + {b}?", "completion": f" {a + b}"} for a in range(4) for b in range(4)]
        args = SFTConfig(output_dir=out + "/trl", max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                         use_cpu=True, bf16=False, activation_checkpointing=False, max_length=32, logging_steps=1,
                         report_to="none", save_strategy="no", dataloader_pin_memory=False, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(rows))
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        print("RESULT " + json.dumps({"cls": type(model).__name__, "generic": type(generic).__name__, "task": cfg.task_type,
                          "adapted": adapted, "losses": losses, "steps": trainer.state.global_step,
                          "plop_imported": any(m.split(".")[0] in ("plop_core", "tasks", "flows")
                                               for m in sys.modules)}))
""")


@pytest.mark.slow  # ~20 s: a fresh interpreter imports torch, transformers, PEFT and TRL
def test_plain_peft_and_trl_load_the_written_files(llama_dir, tmp_path):
    base = T.AutoModelForCausalLM.from_pretrained(llama_dir)
    placement = placement_from_types(discover_candidates(base), ["v", "o", "down"], nfn=NFN)
    outs = {}
    for style in ("list", "regex"):
        outs[style] = tmp_path / style
        paths = write_adapter_config(placement, outs[style], r=4, model=base, target_style=style)
        assert set(paths) == {"adapter_config", "targets"}
    written = json.loads((outs["list"] / "adapter_config.json").read_text())
    assert written["target_modules"] == list(placement.target_modules)  # the model's order, not hash order
    assert written["task_type"] == "CAUSAL_LM" and written["base_model_name_or_path"] == str(llama_dir)
    regex = json.loads((outs["regex"] / "adapter_config.json").read_text())["target_modules"]
    assert regex == r"^model\.layers\.[01]\.(?:self_attn\.v_proj|self_attn\.o_proj|mlp\.down_proj)$"
    summary = (outs["list"] / "targets.md").read_text()
    assert "| 1 | `self_attn.v_proj` | `self_attn.o_proj` | `mlp.down_proj` |" in summary
    assert "**v 0.800**, **o 0.900**, **down 1.000**, up 1.100" in summary

    proc = subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(outs["list"]), str(outs["regex"])],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 2
    for res in results:
        assert res["cls"] == "PeftModelForCausalLM" and res["generic"] == "LoraConfig" and res["task"] == "CAUSAL_LM"
        assert res["adapted"] == sorted(placement.target_modules)
        assert res["steps"] == 3 and len(res["losses"]) == 3 and all(x > 0 for x in res["losses"])
        assert not res["plop_imported"]


def test_write_refuses_a_config_that_misses_modules(tmp_path):
    from peft import LoraConfig

    model = tiny_model("llama")
    placement = placement_from_types(discover_candidates(model), ["v"])
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.self_attn.v_proj'\]"):
        write_adapter_config(LoraConfig(r=2, target_modules=["model.layers.0.self_attn.v_proj"]), tmp_path,
                             placement=placement, model=model)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="needs a Placement or a peft.LoraConfig"):
        write_adapter_config({"r": 2}, tmp_path)


def test_auto_style_lists_up_to_max_listed_names():
    model = tiny_model("llama")
    placement = select_placement(discover_candidates(model), "all")  # 14 modules
    assert placement.to_lora_config(r=2).target_modules == set(placement.target_modules)
    cfg = placement.to_lora_config(r=2, max_listed=13)
    assert isinstance(cfg.target_modules, str) and cfg.target_modules.startswith("^model\\.layers\\.[01]\\.")
    with pytest.raises(ValueError, match="target_style='both'"):
        placement.to_lora_config(r=2, target_style="both")


def test_int_regex_matches_exactly_its_integers():
    assert int_regex(range(30)) == "(?:[0-9]|[12][0-9])"
    assert int_regex([3]) == "3" and int_regex([1, 4, 5]) == "(?:1|[45])"
    rng = random.Random(0)
    for trial in range(400):
        values = (set(rng.sample(range(1100), rng.randint(1, 25))) if trial % 2
                  else set(range(rng.randint(0, 150), rng.randint(151, 1050))))
        rx = int_regex(values)
        assert {i for i in range(1200) if re.fullmatch(rx, str(i))} == values, rx
        assert not re.fullmatch(rx, "0" + str(max(values)))  # no leading zeros


def test_names_regex_is_exact_on_non_product_sets():
    names = [f"model.layers.{i}.mlp.experts.{e}.w1" for i in range(4) for e in range(8) if not (i == 2 and e > 3)]
    rx = names_regex(names)
    universe = [f"model.layers.{i}.mlp.experts.{e}.{w}" for i in range(12) for e in range(12) for w in ("w1", "w2")]
    assert {n for n in universe if re.fullmatch(rx, n)} == set(names)


REAL = [("smollm2-135m-instruct", "AutoModelForCausalLM", "CAUSAL_LM"),
        ("gemma3-270m", "AutoModelForCausalLM", "CAUSAL_LM"),
        ("minilm-l6", "AutoModel", "FEATURE_EXTRACTION")]


@pytest.mark.slow
@pytest.mark.parametrize("asset,auto,task", REAL)
def test_regex_is_exact_on_real_module_names(asset, auto, task):
    """On each real checkpoint: for many random (types, layers) subsets the regex full-matches exactly the
    placement's modules among ALL module names of the model, and PEFT's list matching agrees."""
    from plop_core.assets import asset_path_or_none

    path = asset_path_or_none(asset)
    if path is None:
        pytest.skip(f"offline asset {asset} not fetched (plop assets fetch {asset})")
    model = getattr(T, auto).from_pretrained(path)
    assert base_model_facts(model)["task_type"] == task
    disc = discover_candidates(model)
    all_names = [n for n, _ in model.named_modules()]
    rng = random.Random(0)
    for trial in range(40):
        types = rng.sample(disc.types, rng.randint(1, len(disc.types)))
        layers = set(disc.layers) if trial % 3 == 0 else set(rng.sample(disc.layers, rng.randint(1, len(disc.layers))))
        full = placement_from_types(disc, types)
        placement = type(full)(full.strategy, full.types, tuple(c for c in full.candidates if c.layer in layers),
                               base_model=full.base_model)
        regex = placement.to_lora_config(r=2, target_style="regex")
        assert {n for n in all_names if re.fullmatch(regex.target_modules, n)} == set(placement.target_modules)
        assert len(regex.target_modules) < 400
        listed = placement.to_lora_config(r=2, target_style="list")
        assert set(placement.check_targets(listed, model)) == set(placement.target_modules)
        assert regex.task_type == task and regex.base_model_name_or_path == str(path)


@pytest.mark.parametrize("build,task", [
    (lambda: T.AutoModelForCausalLM.from_config(tiny_config("llama")), "CAUSAL_LM"),
    (lambda: T.AutoModelForCausalLM.from_config(tiny_config("gpt2")), "CAUSAL_LM"),  # GPT2LMHeadModel
    (lambda: T.AutoModel.from_config(tiny_config("llama")), "FEATURE_EXTRACTION"),
    (lambda: T.AutoModel.from_config(tiny_config("bert")), "FEATURE_EXTRACTION"),
    (lambda: T.AutoModelForSequenceClassification.from_config(tiny_config("bert")), "SEQ_CLS"),
    (lambda: T.AutoModelForTokenClassification.from_config(tiny_config("bert")), "TOKEN_CLS"),
    (lambda: T.AutoModelForQuestionAnswering.from_config(tiny_config("bert")), "QUESTION_ANS"),
    (lambda: T.AutoModelForSeq2SeqLM.from_config(T.T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2,
                                                             d_kv=16, vocab_size=100)), "SEQ_2_SEQ_LM"),
    (lambda: T.AutoModelForMaskedLM.from_config(tiny_config("bert")), None),  # PEFT has no masked-LM task
])
def test_peft_task_type_from_the_model(build, task):
    model = build()
    assert peft_task_type(model) == task
    placement = select_placement(discover_candidates(model), "all")
    assert placement.to_lora_config(r=2).task_type == task
    assert placement.to_lora_config(r=2, task_type=None).task_type is None


def test_base_model_facts_of_a_saved_model(llama_dir):
    facts = base_model_facts(T.AutoModelForCausalLM.from_pretrained(llama_dir))
    assert facts == {"task_type": "CAUSAL_LM", "base_model_name_or_path": str(llama_dir), "revision": None,
                     "architecture": "LlamaForCausalLM", "model_type": "llama"}
    p = placement_from_types(discover_candidates(T.AutoModelForCausalLM.from_pretrained(llama_dir)), ["q"])
    assert type(p).from_dict(json.loads(json.dumps(p.to_dict()))).base_model == facts
    assert p.to_lora_config(r=2, revision="abc123").revision == "abc123"
