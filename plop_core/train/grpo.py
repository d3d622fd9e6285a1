"""LoRA GRPO (TRL `GRPOTrainer` + PEFT) on one placement, with the paper's math rewards.

Why: the paper's second comparison trains with GRPO (r=16, alpha=32, dropout 0.05, lr 5e-6, 8
generations, 512-token completions) rewarded for the `<think>/<answer>` format and a numerically
correct answer. Prompts carry the paper-style instruction to reason inside `<think></think>` and
answer inside `<answer></answer>` (`FinetuneConfig.grpo_system_prompt`, `with_instruction`: a system
message with a chat template, else prefixed text); without it an untrained model almost never earns the
format reward and correctness must parse free text. This runner writes against the installed TRL
(1.16): the generation batch (`per_device_train_batch_size x steps_per_generation`) must be divisible by
`num_generations`, so the per-device batch is rounded up to a multiple of it; `max_prompt_length` no longer exists (prompts are
not truncated, keep them short). On CPU it uses small completion budgets (`max_completion_length`);
on a GPU the same code scales with the recipe.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from plop_core.config import FinetuneConfig
from plop_core.train.common import (
    ModelSource,
    TrainResult,
    as_chat_prompt,
    attach_lora,
    build_lora_config,
    curves,
    has_chat_template,
    load_fresh_model,
    run_trainer,
    trainer_device_args,
)
from plop_core.train.rewards import REWARDS


def resolve_rewards(rewards) -> list[Callable]:
    """Reward callables from names (`format`, `correctness`) or callables."""
    out = []
    for r in rewards:
        if callable(r):
            out.append(r)
        elif r in REWARDS:
            out.append(REWARDS[r])
        else:
            raise ValueError(f"unknown GRPO reward {r!r}; use one of {sorted(REWARDS)} or pass a callable")
    if not out:
        raise ValueError("GRPO needs at least one reward; e.g. rewards=['format', 'correctness']")
    return out


def grpo_batch_size(batch_size: int, num_generations: int) -> int:
    """The per-device batch: `batch_size` rounded up to a multiple of `num_generations` (TRL's rule)."""
    return num_generations * max(1, math.ceil(batch_size / num_generations))


def grpo_args(recipe: FinetuneConfig, output_dir: str, seed: int, progress: bool = False):
    from trl import GRPOConfig

    kwargs = dict(
        output_dir=output_dir,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=grpo_batch_size(recipe.batch_size, recipe.num_generations),
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        num_generations=recipe.num_generations,
        max_completion_length=recipe.max_completion_length,
        temperature=recipe.grpo_temperature,
        learning_rate=recipe.grpo_learning_rate or recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_ratio,
        use_vllm=False,
        seed=seed,
        data_seed=seed,
    )
    kwargs.update(trainer_device_args(recipe.overrides, progress))
    return GRPOConfig(**kwargs)


def supports_system_role(tokenizer) -> bool:
    """True when the tokenizer's chat template renders a system message (some templates raise on one)."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": "plop-system-probe"}, {"role": "user", "content": "u"}], tokenize=False)
    except Exception:  # jinja TemplateError ("System role not supported") and friends
        return False
    return "plop-system-probe" in text


def with_instruction(tokenizer, prompt: str | list, instruction: str | None, system_ok: bool | None = None):
    """`prompt` carrying the answer-format instruction, as GRPO trains and exact_match evaluates on it.

    With a chat template: a system message (prepended to an existing system message's text; folded into
    the first user message when the template has no system role). Without one: the text
    `instruction + "\\n\\n" + prompt`. Idempotent; `instruction` None or empty returns `prompt` unchanged.
    """
    if not instruction:
        return prompt
    if not has_chat_template(tokenizer):
        if isinstance(prompt, list):
            raise ValueError("chat-format prompt given but the tokenizer has no chat_template; pass plain text "
                             "prompts (TaskSpec.grpo_example(row, tokenizer) renders them)")
        return prompt if str(prompt).startswith(instruction) else f"{instruction}\n\n{prompt}"
    msgs = [dict(m) for m in as_chat_prompt(prompt)]
    if any(instruction in str(m.get("content", "")) for m in msgs):
        return msgs
    if system_ok is None:
        system_ok = supports_system_role(tokenizer)
    if msgs and msgs[0].get("role") == "system":
        msgs[0]["content"] = f"{instruction}\n\n{msgs[0]['content']}"
    elif system_ok:
        msgs.insert(0, {"role": "system", "content": instruction})
    else:
        first_user = next((m for m in msgs if m.get("role") == "user"), None)
        if first_user is None:
            raise ValueError("GRPO chat prompt has no user message to carry the instruction; give a user turn")
        first_user["content"] = f"{instruction}\n\n{first_user['content']}"
    return msgs


def grpo_dataset_rows(tokenizer, rows: list[dict], instruction: str | None = None) -> list[dict]:
    """Rows with `prompt` (chat messages when the tokenizer has a template) carrying `instruction` (the
    answer-format instruction, `FinetuneConfig.grpo_system_prompt`), the other columns kept."""
    chat = has_chat_template(tokenizer)
    system_ok = supports_system_role(tokenizer) if chat and instruction else None
    out = []
    for i, row in enumerate(rows):
        if "prompt" not in row:
            raise ValueError(f"GRPO row {i} has keys {sorted(row)}; it needs `prompt` (and `answer` for the "
                             "correctness reward)")
        new = dict(row)
        new.pop("completion", None)
        prompt = as_chat_prompt(row["prompt"]) if chat else row["prompt"]
        new["prompt"] = with_instruction(tokenizer, prompt, instruction, system_ok)
        out.append(new)
    return out


def train_grpo(
    model: ModelSource,
    tokenizer,
    train_rows: list[dict],
    lora_config,
    recipe: FinetuneConfig | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    r: int | None = None,
    rewards=None,
    progress: bool = False,
    keep_model: bool = False,
) -> TrainResult:
    """LoRA-GRPO a fresh copy of `model` on prompts with reference answers; save the adapter.

    train_rows: dicts with `prompt` (text or messages) and `answer` (reference read by the correctness
        reward; every other column is passed to rewards as a keyword list too).
    rewards: names from `REWARDS` or TRL-signature callables; default `recipe.rewards`.
    Every prompt carries `recipe.grpo_system_prompt` (the `<think>/<answer>` instruction; None: off).
    The returned `TrainResult.rewards` is the mean total reward per step and `reward_components` the
    mean of each reward function per step (from `trainer.state.log_history`).
    """
    from datasets import Dataset
    from trl import GRPOTrainer

    recipe = recipe or FinetuneConfig(method="grpo")
    if not train_rows:
        raise ValueError("train_grpo got no training rows; pass at least one {prompt, answer} row")
    funcs = resolve_rewards(rewards if rewards is not None else recipe.rewards)
    base, tokenizer = load_fresh_model(model, tokenizer)
    tokenizer.padding_side = "left"
    lcfg = build_lora_config(lora_config, recipe, r=r)
    peft_model, trainable, total = attach_lora(base, lcfg, seed)
    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="plop_grpo_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".trainer.") as work:
        trainer = GRPOTrainer(
            model=peft_model,
            reward_funcs=funcs,
            args=grpo_args(recipe, work, seed, progress),
            train_dataset=Dataset.from_list(grpo_dataset_rows(tokenizer, train_rows, recipe.grpo_system_prompt)),
            processing_class=tokenizer,
        )
        def reward_curves(history):
            comps = {}
            for f in funcs:
                key = f"rewards/{getattr(f, '__name__', type(f).__name__)}/mean"
                comps[key.split("/")[1]] = curves(history, key)
            return {"rewards": curves(history, "reward"), "reward_components": comps}

        return run_trainer(trainer, "grpo", progress, out_dir, seed, trainable, total, keep_model,
                           from_history=reward_curves)
