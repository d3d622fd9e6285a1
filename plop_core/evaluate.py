"""Evaluation of a (possibly LoRA-adapted) causal LM on held-out rows, every metric with its interval.

Why: a placement is only "better" if the difference exceeds the noise, so each metric comes with an
interval and per-row values (for paired comparisons):
- `exact_match`: batched greedy generation (left padding), final number extracted with the same
  parser as the GRPO reward (`plop_core.train.rewards.extract_final_number`, the `<answer>` tag first),
  compared with a relative tolerance; Wilson interval. `instruction=` adds GRPO's answer-format
  instruction to these prompts so GRPO arms are evaluated as they were trained.
- `multiple_choice`: the choice with the highest summed log-likelihood as the answer's continuation;
  Wilson interval.
- `nll`: negative log-likelihood per reference token of the reference answer given the prompt, exactly
  as SFT renders it (chat template when the tokenizer has one); cheap and low-variance on CPU; the
  interval is a bootstrap over rows (percentile, seeded). Lower is better.
Everything is deterministic: no sampling, fixed bootstrap seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from plop_core.config import METRICS
from plop_core.train.common import has_chat_template, render_completion, render_prompt
from plop_core.train.rewards import extract_final_number, numbers_match

HIGHER_IS_BETTER = {"nll": False, "exact_match": True, "multiple_choice": True}


# ----------------------------------------------------------------------------- intervals


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (well-behaved at 0, 1 and small n)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = k / n
    den = 1 + z * z / n
    center = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def bootstrap_ratio_interval(num: np.ndarray, den: np.ndarray, level: float = 0.95, n_boot: int = 1000,
                             seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval over rows of sum(num)/sum(den) (e.g. NLL per token)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    n = len(num)
    if n == 0 or n_boot <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = num[idx].sum(1) / np.maximum(den[idx].sum(1), 1e-12)
    alpha = (1 - level) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


# ----------------------------------------------------------------------------- results


@dataclass
class MetricResult:
    name: str
    value: float
    low: float
    high: float
    n: int
    interval: str  # "wilson" | "bootstrap"
    higher_is_better: bool
    per_row: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"metric": self.name, "value": self.value, "low": self.low, "high": self.high, "n": self.n,
                "interval": self.interval, "higher_is_better": self.higher_is_better}


@dataclass
class EvalResult:
    metrics: dict[str, MetricResult]
    n_rows: int
    wall_s: float
    samples: list[dict] = field(default_factory=list, repr=False)  # a few generations, for eyeballing

    def __getitem__(self, name: str) -> MetricResult:
        return self.metrics[name]

    def flat(self) -> dict:
        """One flat record: `{metric}`, `{metric}_low`, `{metric}_high`, `{metric}_n` per metric."""
        out: dict = {}
        for m in self.metrics.values():
            out.update({m.name: m.value, f"{m.name}_low": m.low, f"{m.name}_high": m.high, f"{m.name}_n": m.n})
        return out

    def to_dict(self) -> dict:
        return {"metrics": {k: m.to_dict() for k, m in self.metrics.items()}, "n_rows": self.n_rows,
                "wall_s": self.wall_s, "samples": self.samples}


# ----------------------------------------------------------------------------- row access


def _completion_text(c) -> str:
    return c if isinstance(c, str) else c[-1]["content"]


def _row_example(task, tokenizer, row: dict) -> tuple:
    """(prompt, completion) exactly as SFT trains on it: `TaskSpec.sft_example` (chat messages with a
    chat template, else `plain_prompt` and joiner + response), or the row's own `prompt`/`completion`."""
    if task is not None:
        ex = task.sft_example(row, tokenizer)
        return ex["prompt"], _completion_text(ex["completion"])
    if "prompt" not in row:
        raise ValueError(f"row has keys {sorted(row)}; give each row a `prompt` or pass the TaskSpec as task=")
    comp = row.get("completion", row.get("reference", row.get("answer", "")))
    return row["prompt"], _completion_text(comp) if not isinstance(comp, (int, float)) else str(comp)


def _row_reference(task, row: dict):
    if task is not None:
        return task.reference(row)
    for key in ("reference", "answer", "completion"):
        if key in row:
            return row[key]
    raise ValueError(f"row has keys {sorted(row)}; give a `reference` (or `answer`/`completion`) or a task")


def _row_choices(task, row: dict) -> list[str]:
    choices = task.choices(row) if task is not None else row.get("choices")
    if not choices:
        raise ValueError("multiple_choice needs choices per row (TaskSpec.choices(row) or a `choices` key); "
                         "use the nll or exact_match metric for this task")
    return list(choices)


def _joiner(task, tokenizer) -> str:
    return "" if has_chat_template(tokenizer) else getattr(task, "response_joiner", " ")


# ----------------------------------------------------------------------------- model calls


def _encode_prompt(tokenizer, prompt_text: str) -> list[int]:
    # chat templates already carry their special tokens; plain prompts get BOS like in SFT
    return tokenizer(prompt_text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 8,
                          max_length: int = 1024) -> list[tuple[float, int]]:
    """(sum of log p(continuation tokens | prompt), number of continuation tokens) per (prompt, continuation)."""
    device = next(model.parameters()).device
    encoded = []
    for prompt_text, cont in pairs:
        p = _encode_prompt(tokenizer, prompt_text)
        c = tokenizer(cont, add_special_tokens=False)["input_ids"]
        ids = (p + c)[-max_length:]
        encoded.append((ids, min(len(c), len(ids) - 1)))
    out: list[tuple[float, int]] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for s in range(0, len(encoded), batch_size):
        chunk = encoded[s: s + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attn = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (ids, _) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attn[i, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attn.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = input_ids[:, 1:].to(device)
        tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        for i, (ids, n_cont) in enumerate(chunk):
            end = len(ids) - 1  # predictions for positions 1..len-1 live at 0..len-2
            out.append((float(tok_lp[i, end - n_cont: end].sum()), int(n_cont)))
    return out


@torch.no_grad()
def _generate(model, tokenizer, prompt_texts: list[str], max_new_tokens: int, batch_size: int, progress,
              **generate_kwargs) -> list[str]:
    """The one batched generation loop (left padding, restored after): the decoded new text of every returned
    sequence, prompt-major (`num_return_sequences` of them per prompt when sampling)."""
    device = next(model.parameters()).device
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outs = []
    try:
        for s in range(0, len(prompt_texts), batch_size):
            enc = tokenizer(prompt_texts[s: s + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=not has_chat_template(tokenizer)).to(device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 **generate_kwargs)
            new = gen[:, enc["input_ids"].shape[1]:]
            outs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            if progress is not None:
                progress.update(len(enc["input_ids"]))
    finally:
        tokenizer.padding_side = old_side
    return outs


def generate_greedy(model, tokenizer, prompt_texts: list[str], max_new_tokens: int = 256,
                    batch_size: int = 8, progress=None) -> list[str]:
    """Batched greedy generation with left padding; returns the decoded new text per prompt."""
    return _generate(model, tokenizer, prompt_texts, max_new_tokens, batch_size, progress,
                     do_sample=False, temperature=None, top_p=None, top_k=None)


def generate_sampled(model, tokenizer, prompt_texts: list[str], num_samples: int, max_new_tokens: int = 256,
                     batch_size: int = 8, temperature: float = 1.0, progress=None) -> list[list[str]]:
    """`num_samples` completions per prompt, sampled at `temperature` with no top-p/top-k cut: what GRPO's
    group sampling draws with TRL's defaults. Seed torch's generator first for repeatable draws."""
    flat = _generate(model, tokenizer, prompt_texts, max_new_tokens, batch_size, progress, do_sample=True,
                     temperature=temperature, top_p=1.0, top_k=0, num_return_sequences=num_samples)
    return [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(prompt_texts))]


# ----------------------------------------------------------------------------- metrics


def _nll(model, tokenizer, task, rows, cfg) -> MetricResult:
    pairs = []
    for row in rows:
        prompt, completion = _row_example(task, tokenizer, row)
        pairs.append((render_prompt(tokenizer, prompt), render_completion(tokenizer, prompt, completion)))
    lps = continuation_logprobs(model, tokenizer, pairs, cfg["batch_size"], cfg["max_length"])
    num = np.array([-lp for lp, _ in lps])
    den = np.array([n for _, n in lps], float)
    value = float(num.sum() / max(den.sum(), 1))
    lo, hi = bootstrap_ratio_interval(num, den, cfg["ci_level"], cfg["n_bootstrap"], cfg["seed"])
    per_row = (num / np.maximum(den, 1)).tolist()
    return MetricResult("nll", value, lo, hi, len(rows), "bootstrap", False, per_row)


def _binomial(name: str, hits: list[float], level: float) -> MetricResult:
    k, n = int(sum(hits)), len(hits)
    lo, hi = wilson_interval(k, n, level)
    return MetricResult(name, k / n if n else float("nan"), lo, hi, n, "wilson", True, list(hits))


def _exact_match(model, tokenizer, task, rows, cfg, samples: list) -> MetricResult:
    prompts = [_row_example(task, tokenizer, r)[0] for r in rows]
    if cfg.get("instruction"):  # GRPO-trained arms answer the prompts they were trained on
        from plop_core.train.grpo import with_instruction

        prompts = [with_instruction(tokenizer, p, cfg["instruction"]) for p in prompts]
    prompts = [render_prompt(tokenizer, p) for p in prompts]
    gens = generate_greedy(model, tokenizer, prompts, cfg["max_new_tokens"], cfg["batch_size"])
    refs = [_row_reference(task, row) for row in rows]
    hits = score_exact_match(gens, refs, cfg["rel_tol"])
    for g, ref in list(zip(gens, refs))[:5]:
        samples.append({"generation": g, "pred": extract_final_number(g), "ref": extract_final_number(ref)})
    return _binomial("exact_match", hits, cfg["ci_level"])


def score_exact_match(generations: list[str], references: list, rel_tol: float = 1e-4) -> list[float]:
    """1.0 per generation whose final number equals the reference's final number (tolerant), else 0.0."""
    return [1.0 if numbers_match(extract_final_number(g), extract_final_number(r), rel_tol=rel_tol) else 0.0
            for g, r in zip(generations, references, strict=True)]


def _gold_index(task, row, choices: list[str]) -> int:
    ref = _row_reference(task, row)
    if isinstance(ref, (int, np.integer)) and not isinstance(ref, bool):
        return int(ref)
    if str(ref) in choices:
        return choices.index(str(ref))
    stripped = [c.strip() for c in choices]
    if str(ref).strip() in stripped:
        return stripped.index(str(ref).strip())
    raise ValueError(f"reference {ref!r} is neither a choice index nor one of the choices {choices}")


def _multiple_choice(model, tokenizer, task, rows, cfg) -> MetricResult:
    pairs, spans = [], []
    joiner = _joiner(task, tokenizer)
    for row in rows:
        prompt = _row_example(task, tokenizer, row)[0]
        prompt_text = render_prompt(tokenizer, prompt)
        choices = _row_choices(task, row)
        spans.append((len(pairs), len(choices), _gold_index(task, row, choices)))
        # each choice scored as the whole response, rendered as in SFT (end-of-turn marker included)
        pairs.extend((prompt_text, render_completion(tokenizer, prompt, joiner + c)) for c in choices)
    lps = continuation_logprobs(model, tokenizer, pairs, cfg["batch_size"], cfg["max_length"])
    hits = []
    for start, k, gold in spans:
        scores = [lps[start + j][0] for j in range(k)]
        hits.append(1.0 if int(np.argmax(scores)) == gold else 0.0)
    return _binomial("multiple_choice", hits, cfg["ci_level"])


def evaluate_model(model, tokenizer, task=None, rows: list[dict] | None = None, metrics=("nll",),
                   batch_size: int = 8, max_new_tokens: int = 256, ci_level: float = 0.95,
                   n_bootstrap: int = 1000, rel_tol: float = 1e-4, max_length: int = 1024,
                   seed: int = 0, instruction: str | None = None) -> EvalResult:
    """Evaluate `model` on `rows` with each metric; returns values, intervals, n and per-row values.

    task: a TaskSpec (sft_example/reference/choices per row) or None, then rows carry `prompt`,
        `completion` (for nll), `reference` or `answer` (for exact_match; else the completion) and for
        multiple choice `choices` (reference = index or choice text).
    instruction: an instruction added to the exact_match prompts (system message with a chat template,
        else prefixed text; `plop_core.train.grpo.with_instruction`): GRPO-trained models are evaluated on
        the prompts they were trained on (`FinetuneConfig.grpo_system_prompt`). Default None: the prompts
        as SFT renders them. nll and multiple_choice never use it (they score the task's reference text).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if not rows:
        raise ValueError("evaluate_model got no rows; pass held-out rows (EvalConfig.n_samples >= 1)")
    cfg = dict(batch_size=batch_size, max_new_tokens=max_new_tokens, ci_level=ci_level,
               n_bootstrap=n_bootstrap, rel_tol=rel_tol, max_length=max_length, seed=seed, instruction=instruction)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    out: dict[str, MetricResult] = {}
    samples: list[dict] = []
    try:
        for m in metrics:
            if m == "nll":
                out[m] = _nll(model, tokenizer, task, rows, cfg)
            elif m == "exact_match":
                out[m] = _exact_match(model, tokenizer, task, rows, cfg, samples)
            else:
                out[m] = _multiple_choice(model, tokenizer, task, rows, cfg)
    finally:
        model.train(was_training)
    return EvalResult(out, len(rows), time.perf_counter() - t0, samples)


def load_adapted(base_source, adapter_dir=None, tokenizer=None):
    """(model, tokenizer) for evaluation: a fresh base model, with the LoRA adapter from `adapter_dir` if given."""
    from peft import PeftModel

    from plop_core.train.common import load_fresh_model

    model, tokenizer = load_fresh_model(base_source, tokenizer)
    if adapter_dir:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer
