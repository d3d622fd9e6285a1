"""LoRA supervised finetuning (TRL `SFTTrainer` + PEFT) on one placement.

Why: the paper proves a placement by finetuning only the chosen modules and comparing arms. This
runner loads a fresh base model, attaches LoRA to exactly the given modules (seeded init), trains with
the loss on the response only (prompt/completion rows; chat template when the tokenizer has one),
and records what a comparison needs: trainable parameters, per-step loss, tokens/s, peak memory,
wall time, and the saved adapter (safetensors + adapter_config.json).

Recipe defaults follow the paper (r=64, alpha=2r, AdamW lr 4e-4, cosine, warmup 0.1, max length
1024) scaled to the hardware by `FinetuneConfig` (fewer steps, shorter sequences on CPU).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from plop_core.config import FinetuneConfig
from plop_core.train.common import (
    ModelSource,
    TrainResult,
    attach_lora,
    build_lora_config,
    load_fresh_model,
    run_trainer,
    sft_dataset_rows,
    trainer_device_args,
)


def sft_args(recipe: FinetuneConfig, output_dir: str, seed: int, completion_only: bool, progress: bool = False):
    """The `SFTConfig` for a recipe on this machine (CPU-safe on CPU, bf16 on GPU)."""
    from trl import SFTConfig

    kwargs = dict(
        output_dir=output_dir,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler_type,
        warmup_steps=recipe.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=0.0,
        max_length=recipe.max_length,
        seed=seed,
        data_seed=seed,
        completion_only_loss=completion_only,
        dataset_num_proc=None,
    )
    kwargs.update(trainer_device_args(recipe.overrides, progress))
    return SFTConfig(**kwargs)


def train_sft(
    model: ModelSource,
    tokenizer,
    train_rows: list[dict],
    lora_config,
    recipe: FinetuneConfig | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    r: int | None = None,
    progress: bool = False,
    keep_model: bool = False,
) -> TrainResult:
    """LoRA-SFT a fresh copy of `model` on `train_rows` and save the adapter under `out_dir/adapter`.

    model: a local folder / hub id / ModelSpec / LoadedModel / model object (deep-copied).
    tokenizer: the tokenizer (None: loaded with the model).
    train_rows: dicts with `prompt` and `completion` (loss on the completion only) or `messages`.
    lora_config: a `peft.LoraConfig`, or exact module names (e.g. `Placement.target_modules`); then
        rank `r` (default `recipe.lora.r`), alpha 2r and dropout come from the recipe.
    keep_model: return the trained PeftModel in `result.model` (for in-process evaluation).
    progress: show TRL's tqdm bar (and its log lines); off keeps stdout clean.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    recipe = recipe or FinetuneConfig()
    if not train_rows:
        raise ValueError("train_sft got no training rows; pass at least one {prompt, completion} row")
    base, tokenizer = load_fresh_model(model, tokenizer)
    lcfg = build_lora_config(lora_config, recipe, r=r)
    peft_model, trainable, total = attach_lora(base, lcfg, seed)
    rows = sft_dataset_rows(tokenizer, train_rows)
    completion_only = "prompt" in rows[0]
    out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="plop_sft_"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".trainer.") as work:
        trainer = SFTTrainer(
            model=peft_model,
            args=sft_args(recipe, work, seed, completion_only, progress),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        return run_trainer(trainer, "sft", progress, out_dir, seed, trainable, total, keep_model)
