"""Math rewards for GRPO and the final-number parser shared with evaluation.

Why here: the paper's GRPO recipe rewards (1) the `<think>...</think><answer>...</answer>` format and
(2) a numerically correct final answer, and its evaluation is GSM8K pass@1 with the final number
extracted from the answer. Both sides must parse numbers the same way, so `extract_final_number`
lives here and `plop_core.evaluate` imports it; it reads the `<answer>` tag first when there is one.
The prompts ask for that format (`FinetuneConfig.grpo_system_prompt`, applied by
`plop_core.train.grpo.with_instruction`), so an untrained model can earn the format reward at all.

Reward functions follow TRL's signature `f(completions, **kwargs) -> list[float]`: `completions` is a
list of strings (or of message lists for chat prompts) and every dataset column arrives as a keyword
list; the correctness reward reads the `answer` column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction

THINK_ANSWER_PATTERN = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"

# A number: optional sign (not a hyphen between two words/digits), thousands groups or plain digits,
# optional decimals; or a leading-dot decimal. Fractions a/b are tried first.
_SIGN = r"(?:(?<![\w.])[-\u2212])?"
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
_FRACTION_RE = re.compile(rf"{_SIGN}\d+\s*/\s*\d+(?![\d.,]*\d)")
_NUMBER_RE = re.compile(rf"{_SIGN}{_NUM}")
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_LATEX_FRAC_RE = re.compile(r"([-\u2212]?)\\d?frac\s*\{\s*([-\u2212]?[\d.,]+)\s*\}\s*\{\s*([-\u2212]?[\d.,]+)\s*\}")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_ANSWER_IS_RE = re.compile(r"(?:final answer|answer)\s*(?:is|=|:)", re.IGNORECASE)


def _to_float(token: str) -> float | None:
    token = token.replace("\u2212", "-").replace(",", "").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            if float(den) == 0:
                return None
            return float(Fraction(int(num), int(den)))
        return float(token)
    except (ValueError, ZeroDivisionError):
        return None


def _boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` with balanced braces (nested braces allowed)."""
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1])
    return out


def _last_number(text: str) -> float | None:
    """The last number in `text` (LaTeX fraction, a/b fraction or decimal, whichever ends last)."""
    candidates: list[tuple[int, float]] = []
    for m in _LATEX_FRAC_RE.finditer(text):
        num, den = _to_float(m.group(2)), _to_float(m.group(3))
        if num is not None and den:
            candidates.append((m.end(), (-1 if m.group(1) else 1) * num / den))
    frac_spans = []
    for m in _FRACTION_RE.finditer(text):
        v = _to_float(m.group(0))
        if v is not None:
            candidates.append((m.end(), v))
            frac_spans.append(m.span())
    for m in _NUMBER_RE.finditer(text):
        if any(a <= m.start() < b for a, b in frac_spans):
            continue
        v = _to_float(m.group(0))
        if v is not None:
            candidates.append((m.end(), v))
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def _first_number(text: str) -> float | None:
    for m in _NUMBER_RE.finditer(text):
        # a fraction starting here wins over its numerator
        f = _FRACTION_RE.match(text, m.start())
        v = _to_float(f.group(0)) if f else _to_float(m.group(0))
        if v is not None:
            return v
    return None


def extract_final_number(text: object) -> float | None:
    """The final numeric answer in a generation or reference, or None when there is no number.

    Order of precedence: the content of the last `<answer>...</answer>` (an unclosed trailing `<answer>`
    counts; once a tag is there its content decides, other numbers in the text are ignored, and no number
    in it gives None), then the text after the last `####` (GSM8K references), the last `\\boxed{...}`,
    the number after the last "answer is" / "answer:", then the last number anywhere. The same order
    applies inside the tag (`<answer>\\boxed{3}</answer>`, `<answer>The answer is 5 apples</answer>`).
    Handles thousands separators (`1,234.5`), currency and units (`$12`, `5 dollars`), negatives (`-3`,
    unicode minus), decimals, `a/b` and `\\frac{a}{b}` fractions.
    """
    if text is None:
        return None
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text) if math.isfinite(float(text)) else None
    text = str(text)
    tags = _ANSWER_TAG_RE.findall(text)
    if tags:
        return _untagged_final_number(tags[-1])
    return _untagged_final_number(text)


def _untagged_final_number(text: str) -> float | None:
    if "####" in text:
        v = _first_number(text.rsplit("####", 1)[1])
        if v is not None:
            return v
    boxed = _boxed_contents(text)
    if boxed:
        v = _last_number(boxed[-1])
        if v is not None:
            return v
    phrases = list(_ANSWER_IS_RE.finditer(text))
    if phrases:
        v = _first_number(text[phrases[-1].end():])
        if v is not None:
            return v
    return _last_number(text)


def numbers_match(pred: float | None, ref: float | None, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    """True when both are numbers and equal within tolerance (relative or absolute)."""
    if pred is None or ref is None:
        return False
    return math.isclose(pred, ref, rel_tol=rel_tol, abs_tol=abs_tol)


def completion_text(completion: object) -> str:
    """A TRL completion as text: strings as they are, chat completions as their last message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            return str(last.get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


def make_format_reward(pattern: str = THINK_ANSWER_PATTERN, name: str = "format_reward") -> Callable:
    """A TRL reward giving 1.0 to completions that match `pattern` (full match, DOTALL) and 0.0 otherwise."""
    regex = re.compile(pattern, re.DOTALL)

    def reward(completions, **kwargs) -> list[float]:
        return [1.0 if regex.match(completion_text(c)) else 0.0 for c in completions]

    reward.__name__ = name
    return reward


format_reward = make_format_reward()
format_reward.__doc__ = "1.0 for `<think>...</think><answer>...</answer>` completions, else 0.0 (TRL signature)."


def correctness_reward(completions, answer=None, **kwargs) -> list[float]:
    """1.0 when the completion's final number equals the `answer` column's (tolerant parsing), else 0.0."""
    if answer is None:
        raise ValueError(
            "correctness_reward needs an `answer` column in the training rows; "
            "add `answer` (the reference, e.g. '#### 42' or '42') to each GRPO row"
        )
    out = []
    for c, ref in zip(completions, answer, strict=True):
        out.append(1.0 if numbers_match(extract_final_number(completion_text(c)), extract_final_number(ref)) else 0.0)
    return out


MATH_REWARDS = (format_reward, correctness_reward)
REWARDS: dict[str, Callable] = {"format": format_reward, "correctness": correctness_reward}  # names in configs
