"""Shared pieces of the SFT and GRPO runners: fresh model loading, LoRA configs, device settings,
prompt rendering, adapter saving, and the `TrainResult` record.

Why: both runners must load a *fresh* base model per run (never train a shared one in place), pick
CPU-safe or GPU settings the same way, render prompts exactly as evaluation does (chat template when
the tokenizer has one), and save adapters atomically in safetensors.
"""

from __future__ import annotations

import copy
import resource
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from plop_core.atomic import atomic_dir

ModelSource = Any  # str | Path | ModelSpec | LoadedModel | PreTrainedModel


@dataclass
class TrainResult:
    """What one finetuning run did: counts, the loss (or reward) curve, throughput, memory, where the adapter is."""

    method: str
    trainable_params: int
    total_params: int
    steps: int
    losses: list[float]
    tokens_per_s: float | None
    peak_mem_mb: float
    wall_s: float
    adapter_dir: str | None
    target_modules: list[str] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    reward_components: dict[str, list[float]] = field(default_factory=dict)
    device: str = "cpu"
    seed: int = 0
    log_history: list[dict] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)  # the trained PeftModel when keep_model=True

    @property
    def first_loss(self) -> float | None:
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None

    def curve(self, extra: bool = True) -> list[dict]:
        """One row per logged optimizer step from the trainer's log history, for a `training` table / MLflow.

        Columns: `CURVE_COLUMNS` (step, epoch, loss, learning_rate, grad_norm) always, in that order, then
        (extra=True) every other numeric value TRL logged, under TRL's own names, sorted: SFT adds
        entropy, mean_token_accuracy, num_tokens; GRPO adds reward, reward_std, `rewards/<func>/mean|std`,
        completion lengths, clip ratios. Every row has the same keys (None where a step lacks a value).
        The end-of-training summary entry (train_runtime, ...) is not a step: see `train_summary`.
        """
        steps = [h for h in self.log_history if "step" in h and not _is_summary(h)
                 and any(k in h for k in ("loss", "reward"))]
        keys = list(CURVE_COLUMNS)
        if extra:
            keys += sorted({k for h in steps for k, v in h.items() if k not in CURVE_COLUMNS and _is_number(v)})
        return [{k: (int(h[k]) if k == "step" else float(h[k]) if _is_number(h.get(k)) else None) for k in keys}
                for h in steps]

    def train_summary(self) -> dict:
        """The trainer's end-of-training entry (train_runtime, train_loss, train_samples_per_second, ...)."""
        last = next((h for h in reversed(self.log_history) if _is_summary(h)), {})
        return {k: v for k, v in last.items() if _is_number(v)}

    def to_dict(self, with_history: bool = False) -> dict:
        """JSON-able record; `curve` (the per-step rows) is always in it, the raw log history on request."""
        d = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "model"}
        if not with_history:
            d.pop("log_history")
        d["first_loss"], d["final_loss"] = self.first_loss, self.final_loss
        d["curve"], d["train_summary"] = self.curve(), self.train_summary()
        return d


CURVE_COLUMNS = ("step", "epoch", "loss", "learning_rate", "grad_norm")


def _is_summary(entry: dict) -> bool:
    return "train_runtime" in entry


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def device_kind() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def trainer_device_args(overrides: dict | None = None, progress: bool = False) -> dict:
    """TRL/transformers arguments that run on this machine: CPU-safe on CPU, bf16 on a GPU that supports it.

    On CPU: `use_cpu=True, bf16=False` (TRL otherwise enables bf16 and fails or runs 2x slower under
    autocast), no activation checkpointing, no pinned memory. On GPU: bf16 when supported.
    """
    if torch.cuda.is_available():
        args = dict(use_cpu=False, bf16=torch.cuda.is_bf16_supported(), activation_checkpointing=False)
    else:
        args = dict(use_cpu=True, bf16=False, activation_checkpointing=False, dataloader_pin_memory=False)
    args.update(report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=not progress)
    args.update(overrides or {})
    return args


def load_fresh_model(source: ModelSource, tokenizer=None):
    """A fresh (model, tokenizer) for one run.

    `source` may be a local folder or hub id (loaded with `from_pretrained`), a `ModelSpec` or asset
    name resolved by `plop_core.models.load_model`, a `LoadedModel`, or a model object (deep-copied, so
    the caller's model is never trained in place).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if gpu_bf16 else torch.float32  # PEFT keeps the LoRA weights in fp32 either way
    if isinstance(source, PreTrainedModel):
        model = copy.deepcopy(source)
    elif hasattr(source, "model") and hasattr(source, "tokenizer"):  # LoadedModel
        model = copy.deepcopy(source.model)
        tokenizer = tokenizer or source.tokenizer
    elif isinstance(source, (str, Path)) and Path(source).is_dir():
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(source))
    else:
        from plop_core.config import ModelSpec
        from plop_core.models import load_model

        spec = source if isinstance(source, ModelSpec) else ModelSpec(id=str(source))
        loaded = load_model(spec)
        model, tokenizer = loaded.model, tokenizer or loaded.tokenizer
    if tokenizer is None:
        raise ValueError("no tokenizer given and none could be loaded with the model; pass tokenizer=")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.train()
    return model, tokenizer


def build_lora_config(targets, recipe, r: int | None = None, task_type: str = "CAUSAL_LM"):
    """A `peft.LoraConfig` from a LoraConfig (returned as is), or a list of exact module names / suffixes.

    Rank, alpha (default 2r, the paper's recipe) and dropout come from `recipe.lora` unless `r` is given.
    """
    from peft import LoraConfig

    if isinstance(targets, LoraConfig):
        return targets
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    targets = list(targets or [])
    if not targets:
        raise ValueError("no LoRA target modules given; pass a Placement's target_modules or a LoraConfig")
    rank = int(r if r is not None else recipe.lora.r)
    # alpha/r is kept at the recipe's ratio (2 by default, the paper's) when budget matching changes r
    ratio = (recipe.lora.lora_alpha / recipe.lora.r) if recipe.lora.lora_alpha is not None else 2.0
    alpha = max(1, round(ratio * rank))
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=recipe.lora.lora_dropout,
                      target_modules=targets, task_type=task_type)


def attach_lora(model, lora_config, seed: int):
    """Wrap `model` with LoRA (seeded init), check every target matched, return (peft_model, trainable, total)."""
    from peft import get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, lora_config)
    trainable, total = peft_model.get_nb_trainable_parameters()
    if trainable == 0:
        raise ValueError(f"LoRA targets {sorted(lora_config.target_modules)} matched no trainable weights; "
                         "check the module names with `plop score` or Discovery.report()")
    return peft_model, int(trainable), int(total)


def lora_module_names(peft_model) -> list[str]:
    """Exact names (without the PEFT prefix) of the modules that carry LoRA weights."""
    names = set()
    for n, p in peft_model.named_parameters():
        if p.requires_grad and ".lora_A." in n:
            names.add(n.split(".lora_A.")[0].removeprefix("base_model.model."))
    return sorted(names)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def as_chat_prompt(prompt: str | list) -> list[dict]:
    if isinstance(prompt, list):
        return prompt
    return [{"role": "user", "content": str(prompt)}]


def render_prompt(tokenizer, prompt: str | list, use_chat: bool | None = None) -> str:
    """The exact text the model sees before its answer (chat template + generation prompt when available)."""
    if use_chat is None:
        use_chat = has_chat_template(tokenizer)
    if use_chat:
        return tokenizer.apply_chat_template(as_chat_prompt(prompt), tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        raise ValueError("chat-format prompt given but the tokenizer has no chat_template; pass plain text prompts")
    return prompt


def render_completion(tokenizer, prompt: str | list, completion: str, use_chat: bool | None = None) -> str:
    """The answer text as it follows `render_prompt(...)` in training (incl. the end-of-turn marker)."""
    if use_chat is None:
        use_chat = has_chat_template(tokenizer)
    if use_chat:
        p = render_prompt(tokenizer, prompt, True)
        full = tokenizer.apply_chat_template(
            as_chat_prompt(prompt) + [{"role": "assistant", "content": completion}], tokenize=False
        )
        if full.startswith(p):
            return full[len(p):]
    return completion + (tokenizer.eos_token or "")


def sft_dataset_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """Prompt/completion rows in the form TRL's SFTTrainer wants: conversational when a chat template exists.

    Accepts rows with `prompt` + `completion` (strings or message lists), or `messages`.
    """
    out = []
    chat = has_chat_template(tokenizer)
    for i, row in enumerate(rows):
        if "messages" in row:
            out.append({"messages": row["messages"]})
            continue
        if "prompt" not in row or "completion" not in row:
            raise ValueError(f"training row {i} has keys {sorted(row)}; SFT rows need `prompt` and `completion` "
                             "(or `messages`); build them with TaskSpec.sft_example(row, tokenizer)")
        p, c = row["prompt"], row["completion"]
        if chat:
            p = as_chat_prompt(p)
            c = c if isinstance(c, list) else [{"role": "assistant", "content": str(c)}]
        out.append({"prompt": p, "completion": c})
    return out


def peak_memory_mb() -> float:
    """Peak memory: CUDA max allocated on GPU, else the process's peak RSS (ru_maxrss, whole process)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_adapter_atomic(peft_model, out_dir: str | Path) -> Path:
    """Save the adapter (safetensors + adapter_config.json) into `out_dir` via a temp dir and os.replace."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        peft_model.save_pretrained(str(tmp), safe_serialization=True)
        if not (tmp / "adapter_config.json").is_file() or not (tmp / "adapter_model.safetensors").is_file():
            raise RuntimeError(f"PEFT did not write adapter_config.json and adapter_model.safetensors in {tmp}")
    return out_dir


def quiet_trainer(trainer, progress: bool):
    """Without progress, drop the callback that prints every log dict to stdout (logs stay in log_history)."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def curves(log_history: list[dict], key: str) -> list[float]:
    return [float(h[key]) for h in log_history if key in h and not _is_summary(h)]


class Stopwatch:
    def __enter__(self):
        self.t0 = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def run_trainer(trainer, method: str, progress: bool, out_dir: Path, seed: int, trainable: int, total: int,
                keep_model: bool, **extra) -> TrainResult:
    """Train, save the adapter atomically and collect the run's record (shared by SFT and GRPO).

    Must be called inside the trainer's temporary work dir; `extra` adds method-specific fields
    (GRPO's reward curves) computed from `trainer.state.log_history` by the caller's `extra_fn`.
    """
    quiet_trainer(trainer, progress)
    with Stopwatch() as sw:
        out = trainer.train()
    history = list(trainer.state.log_history)
    adapter_dir = save_adapter_atomic(trainer.model, out_dir / "adapter")
    runtime = out.metrics.get("train_runtime", sw.seconds) or sw.seconds
    n_tokens = max(curves(history, "num_tokens") or [0.0])
    fields_from_history = extra.pop("from_history", None)
    return TrainResult(
        method=method,
        trainable_params=trainable,
        total_params=total,
        steps=int(trainer.state.global_step),
        losses=curves(history, "loss"),
        tokens_per_s=(n_tokens / runtime) if n_tokens and runtime else None,
        peak_mem_mb=peak_memory_mb(),
        wall_s=sw.seconds,
        adapter_dir=str(adapter_dir),
        target_modules=lora_module_names(trainer.model),
        device=device_kind(),
        seed=seed,
        log_history=history,
        model=trainer.model.eval() if keep_model else None,
        **(fields_from_history(history) if fields_from_history else {}),
        **extra,
    )
