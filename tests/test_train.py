"""LoRA SFT and GRPO runners on the tiny Llama (saved and loaded by path, like a real model)."""

import json
import math

import pytest
import torch
from safetensors import safe_open

from plop_core.config import FinetuneConfig, LoraRecipe
from plop_core.train.common import build_lora_config, render_completion, render_prompt, sft_dataset_rows
from plop_core.train.grpo import grpo_batch_size, grpo_dataset_rows, train_grpo, with_instruction
from plop_core.train.sft import train_sft

ROWS = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}."} for a in range(4) for b in range(4)]
TARGETS = ["q_proj", "v_proj"]


def recipe(**kw):
    base = dict(max_steps=8, batch_size=4, learning_rate=1e-2, max_length=64, lora=LoraRecipe(r=4))
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.fixture(scope="module")
def sft_run(llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    return train_sft(llama_dir, None, ROWS, TARGETS, recipe(), out, seed=0, keep_model=True)


def test_sft_lowers_training_loss(sft_run):
    assert sft_run.steps == 8 and len(sft_run.losses) == 8
    # golden direction with a margin on a fixed seed: the last two steps are clearly below the first
    assert sum(sft_run.losses[-2:]) / 2 < sft_run.losses[0] - 0.1
    assert sft_run.tokens_per_s > 0 and sft_run.peak_mem_mb > 0 and sft_run.wall_s > 0


# tiny Llama (tests/tiny.py, seed 0) saved by path, ROWS, recipe(): 8 steps, batch 4, lr 1e-2 cosine, warmup 0.1,
# LoRA r=4 on q_proj/v_proj, seed 0, fp32 on CPU. Regenerate only for a deliberate change of model or recipe.
GOLDEN_SFT_LOSSES = [6.240464, 6.210138, 6.174217, 6.096303, 6.059630, 6.030982, 6.032464, 6.016924]


def test_sft_golden_per_step_curve(sft_run):
    curve = sft_run.curve()
    assert [row["step"] for row in curve] == list(range(1, 9))  # one row per logged step (logging_steps=1)
    assert list(curve[0])[:5] == ["step", "epoch", "loss", "learning_rate", "grad_norm"]
    assert all(list(row) == list(curve[0]) for row in curve)  # one schema for every row
    assert [row["loss"] for row in curve] == pytest.approx(GOLDEN_SFT_LOSSES, abs=2e-4)
    assert [row["epoch"] for row in curve] == [s / 4 for s in range(1, 9)]  # 16 rows / batch 4 = 4 steps/epoch
    # TRL logs the rate of the step: 0 during the one warmup step, then cosine from the peak to 0 over 7 steps
    expected_lr = [0.0] + [0.01 * 0.5 * (1 + math.cos(math.pi * i / 7)) for i in range(7)]
    assert [row["learning_rate"] for row in curve] == pytest.approx(expected_lr, rel=1e-6)
    assert all(math.isfinite(row["grad_norm"]) and row["grad_norm"] > 0 for row in curve)
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= set(curve[0])
    assert sft_run.losses == [row["loss"] for row in curve]
    summary = sft_run.train_summary()
    assert summary["train_loss"] == pytest.approx(sum(sft_run.losses) / 8, rel=1e-6) and summary["step"] == 8
    record = json.loads(json.dumps(sft_run.to_dict()))
    assert record["curve"] == curve and "log_history" not in record


def test_sft_is_deterministic_for_a_seed(llama_dir, tmp_path):
    a = train_sft(llama_dir, None, ROWS, TARGETS, recipe(max_steps=3), tmp_path / "a", seed=1)
    b = train_sft(llama_dir, None, ROWS, TARGETS, recipe(max_steps=3), tmp_path / "b", seed=1)
    assert a.losses == b.losses
    with safe_open(f"{a.adapter_dir}/adapter_model.safetensors", "pt") as fa, \
            safe_open(f"{b.adapter_dir}/adapter_model.safetensors", "pt") as fb:
        assert all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_only_chosen_modules_are_trained(sft_run):
    expected = [f"model.layers.{i}.self_attn.{t}" for i in range(2) for t in TARGETS]
    assert sft_run.target_modules == sorted(expected)
    # hidden 64, kv dim 32 (2 kv heads of 16): q (64->64) and v (64->32) at r=4, 2 layers
    assert sft_run.trainable_params == 2 * (4 * (64 + 64) + 4 * (64 + 32))
    trainable = [n for n, p in sft_run.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(any(f"self_attn.{t}." in n for t in TARGETS) for n in trainable)


def test_saved_adapter_is_safetensors_and_reloads_with_same_logits(sft_run, llama_dir, tok):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adir = sft_run.adapter_dir
    cfg = json.loads(open(f"{adir}/adapter_config.json").read())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and sorted(cfg["target_modules"]) == TARGETS
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["base_model_name_or_path"] == str(llama_dir)
    with safe_open(f"{adir}/adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all("q_proj" in k or "v_proj" in k for k in keys)
    # lora_B starts at zero: after training it must not be
    with safe_open(f"{adir}/adapter_model.safetensors", "pt") as f:
        assert any(f.get_tensor(k).abs().sum() > 0 for k in keys if "lora_B" in k)

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), adir).eval()
    base = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    ids = tok(["What is 2 + 3? The answer is 5."], return_tensors="pt")
    with torch.no_grad():
        trained_logits = sft_run.model(**ids).logits
        reloaded_logits = reloaded(**ids).logits
        base_logits = base(**ids).logits
    torch.testing.assert_close(reloaded_logits, trained_logits, atol=1e-5, rtol=1e-5)
    assert (reloaded_logits - base_logits).abs().max() > 1e-3


def test_shared_model_object_is_not_trained_in_place(llama, tok, tmp_path):
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    train_sft(llama, tok, ROWS[:4], TARGETS, recipe(max_steps=1), tmp_path)
    assert not any(".lora_" in n for n, _ in llama.named_parameters())
    assert all(torch.equal(before[n], p) for n, p in llama.named_parameters())


def test_chat_rows_and_rendering_agree(tok):
    rows = sft_dataset_rows(tok, ROWS[:1])
    assert rows[0]["prompt"] == [{"role": "user", "content": "What is 0 + 0?"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "The answer is 0."}]
    p = render_prompt(tok, "What is 0 + 0?")
    c = render_completion(tok, "What is 0 + 0?", "The answer is 0.")
    assert p == "<s>user\nWhat is 0 + 0?</s>\n<s>assistant\n"
    assert c == "The answer is 0.</s>\n"


def test_bad_rows_and_targets_fail_clearly(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="prompt.*completion"):
        train_sft(llama_dir, None, [{"text": "x"}], TARGETS, recipe(max_steps=1), tmp_path)
    with pytest.raises(ValueError, match="no LoRA target modules"):
        build_lora_config([], recipe())


def test_budget_rank_keeps_alpha_ratio():
    assert build_lora_config(["q_proj"], recipe(), r=10).lora_alpha == 20
    fixed = recipe(lora=LoraRecipe(r=8, lora_alpha=8))
    assert build_lora_config(["q_proj"], fixed, r=16).lora_alpha == 16


def test_grpo_batch_rounding():
    assert grpo_batch_size(4, 4) == 4
    assert grpo_batch_size(3, 4) == 4
    assert grpo_batch_size(6, 4) == 8


def test_grpo_two_steps_logs_rewards(llama_dir, tmp_path):
    def has_digit(completions, **kw):
        return [1.0 if any(ch.isdigit() for ch in (c if isinstance(c, str) else c[-1]["content"])) else 0.0
                for c in completions]

    rows = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(2)]
    rec = recipe(method="grpo", max_steps=2, batch_size=4, num_generations=4, max_completion_length=8)
    res = train_grpo(llama_dir, None, rows, TARGETS, rec, tmp_path, seed=0,
                     rewards=["format", "correctness", has_digit])
    assert res.steps == 2 and len(res.rewards) == 2
    assert set(res.reward_components) == {"format_reward", "correctness_reward", "has_digit"}
    assert all(len(v) == 2 for v in res.reward_components.values())
    # total reward is the sum of the components (weights 1)
    for i in range(2):
        assert res.rewards[i] == pytest.approx(sum(v[i] for v in res.reward_components.values()), abs=1e-6)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    curve = res.curve()
    assert [row["step"] for row in curve] == [1, 2]
    assert {"reward", "reward_std", "rewards/format_reward/mean", "rewards/has_digit/mean"} <= set(curve[0])
    assert [row["reward"] for row in curve] == res.rewards
    assert [row["rewards/has_digit/mean"] for row in curve] == res.reward_components["has_digit"]


INSTRUCTION = FinetuneConfig().grpo_system_prompt


def test_default_grpo_instruction_asks_for_the_rewarded_format():
    assert "<think>" in INSTRUCTION and "</think>" in INSTRUCTION
    assert "<answer>" in INSTRUCTION and "</answer>" in INSTRUCTION


def test_rendered_grpo_prompt_carries_the_instruction_chat_and_plain(tok):
    import copy

    rows = [{"prompt": "What is 2 + 3?", "answer": "5", "id": "r0"}]
    # chat template: a system message before the user turn, rendered by the template
    chat = grpo_dataset_rows(tok, rows, INSTRUCTION)[0]
    assert chat["prompt"] == [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": "What is 2 + 3?"}]
    assert chat["answer"] == "5" and chat["id"] == "r0"
    assert render_prompt(tok, chat["prompt"]) == (f"<s>system\n{INSTRUCTION}</s>\n<s>user\nWhat is 2 + 3?</s>\n"
                                                  "<s>assistant\n")
    # no chat template: the instruction is prefixed to the plain prompt
    plain_tok = copy.deepcopy(tok)
    plain_tok.chat_template = None
    plain = grpo_dataset_rows(plain_tok, [{"prompt": "What is 2 + 3?\nAnswer:", "answer": "5"}], INSTRUCTION)[0]
    assert render_prompt(plain_tok, plain["prompt"]) == f"{INSTRUCTION}\n\nWhat is 2 + 3?\nAnswer:"
    # idempotent, and None switches it off (the prompt as the task renders it)
    assert with_instruction(tok, chat["prompt"], INSTRUCTION) == chat["prompt"]
    assert with_instruction(plain_tok, plain["prompt"], INSTRUCTION) == plain["prompt"]
    assert grpo_dataset_rows(tok, rows, None)[0]["prompt"] == [{"role": "user", "content": "What is 2 + 3?"}]


def test_instruction_without_system_role_or_with_own_system_message(tok):
    import copy

    no_system = copy.deepcopy(tok)
    no_system.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
    )
    msgs = with_instruction(no_system, "What is 2 + 3?", "THINK THEN ANSWER")
    assert msgs == [{"role": "user", "content": "THINK THEN ANSWER\n\nWhat is 2 + 3?"}]
    assert "THINK THEN ANSWER" in render_prompt(no_system, msgs)
    own = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert with_instruction(tok, own, "THINK")[0] == {"role": "system", "content": "THINK\n\nBe brief."}
    assert own[0]["content"] == "Be brief."  # the caller's messages are not modified


def test_exact_match_with_instruction_generates_from_the_instructed_prompt(llama, tok):
    from plop_core.evaluate import evaluate_model, generate_greedy, score_exact_match

    rows = [{"prompt": "What is 2 + 3?", "answer": "5"}, {"prompt": "What is 1 + 1?", "answer": "2"}]
    res = evaluate_model(llama, tok, rows=rows, metrics=["exact_match"], max_new_tokens=4, instruction=INSTRUCTION)
    prompts = [render_prompt(tok, with_instruction(tok, r["prompt"], INSTRUCTION)) for r in rows]
    gens = generate_greedy(llama, tok, prompts, max_new_tokens=4)
    assert [s["generation"] for s in res.samples] == gens
    assert res["exact_match"].per_row == score_exact_match(gens, ["5", "2"])
    plain = evaluate_model(llama, tok, rows=rows, metrics=["exact_match"], max_new_tokens=4)
    assert [s["generation"] for s in plain.samples] == generate_greedy(
        llama, tok, [render_prompt(tok, r["prompt"]) for r in rows], max_new_tokens=4)


def test_grpo_unknown_reward_names_the_choices(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="correctness"):
        train_grpo(llama_dir, None, [{"prompt": "x", "answer": "1"}], TARGETS, recipe(method="grpo"), tmp_path,
                   rewards=["speling"])


def test_sft_lowers_heldin_nll_measured_by_the_evaluator(sft_run, llama_dir):
    from plop_core.evaluate import evaluate_model, load_adapted

    base, tok = load_adapted(llama_dir)
    tuned, _ = load_adapted(llama_dir, sft_run.adapter_dir)
    before = evaluate_model(base, tok, rows=ROWS, metrics=["nll"], n_bootstrap=0)["nll"].value
    after = evaluate_model(tuned, tok, rows=ROWS, metrics=["nll"], n_bootstrap=0)["nll"].value
    assert after < before - 0.1
