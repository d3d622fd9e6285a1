"""Short regexes that full-match exactly a given set of dotted module names, and nothing else.

Why: PEFT takes `target_modules` as a list of names (each matched as the whole key or a dot-suffix of
it) or as ONE regex string (full-matched against every module name). Ninety exact names are exact but
long; `model\\.layers\\.(?:[0-9]|[12][0-9])\\.(?:self_attn\\.v_proj|self_attn\\.o_proj|mlp\\.down_proj)`
says the same in one line a person can read. This module builds such regexes so that they stay exact:

- a name is split on dots; components that are decimal integers (`0`, `17`; no leading zeros) are
  numeric slots, the rest is the name's skeleton (matched literally, `re.escape`d);
- names sharing a skeleton are folded: when their slot values form a full product (every layer has
  every expert, say) one pattern per skeleton uses an exact integer-set regex per slot (`int_regex`);
  otherwise the names are split by the first slot's value and folded again (values with the same rest
  are merged back), so the pattern never admits a combination that is not in the set;
- skeletons with the same slot values and the same prefix up to their last slot share one pattern,
  their tails becoming an alternation.

A numeric slot regex matches decimal strings only and never a dot, so a pattern matches exactly the
names it was built from, whatever other module names a model has (tests check this on real models).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

_INT = re.compile(r"0|[1-9][0-9]*")


def _digit_class(lo: int, hi: int) -> str:
    if lo == hi:
        return str(lo)
    if lo == 0 and hi == 9:
        return "[0-9]"
    return f"[{lo}{hi}]" if hi == lo + 1 else f"[{lo}-{hi}]"


def _same_length(a: str, b: str) -> list[str]:
    """Alternatives (none with a top-level '|') matching the integers a..b, both with the same digit count."""
    if a == b:
        return [a]
    if len(a) == 1:
        return [_digit_class(int(a), int(b))]
    if a[0] == b[0]:
        return [a[0] + alt for alt in _same_length(a[1:], b[1:])]
    rest = len(a) - 1
    out: list[str] = []
    first_full, last_full = int(a[0]), int(b[0])
    if a[1:] != "0" * rest:
        out += [a[0] + alt for alt in _same_length(a[1:], "9" * rest)]
        first_full += 1
    upper: list[str] = []
    if b[1:] != "9" * rest:
        upper = [b[0] + alt for alt in _same_length("0" * rest, b[1:])]
        last_full -= 1
    if first_full <= last_full:
        out.append(_digit_class(first_full, last_full) + ("[0-9]" if rest == 1 else f"[0-9]{{{rest}}}"))
    return out + upper


def _range_alternatives(lo: int, hi: int) -> list[str]:
    out: list[str] = []
    for n_digits in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (n_digits - 1) if n_digits > 1 else 0)
        b = min(hi, 10 ** n_digits - 1)
        out += _same_length(str(a), str(b))
    return out


def int_regex(values: Iterable[int]) -> str:
    """A regex full-matching exactly the decimal strings of `values` (non-negative ints), e.g.
    {0..29} -> `(?:[0-9]|[12][0-9])`, {3} -> `3`, {1, 4, 5} -> `(?:1|[45])`."""
    vals = sorted({int(v) for v in values})
    if not vals or vals[0] < 0:
        raise ValueError(f"int_regex needs non-negative integers, got {vals[:5]}")
    runs: list[list[int]] = []
    for v in vals:
        if runs and runs[-1][1] == v - 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    alts = [alt for lo, hi in runs for alt in _range_alternatives(lo, hi)]
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def _fold(tuples: list[tuple[int, ...]]) -> list[tuple[frozenset, ...]]:
    """Exact cover of a set of integer tuples by products of per-slot value sets."""
    uniq = sorted(set(tuples))
    if not uniq[0]:
        return [()]
    sets = [frozenset(t[i] for t in uniq) for i in range(len(uniq[0]))]
    if math.prod(len(s) for s in sets) == len(uniq):
        return [tuple(sets)]
    by_first: dict[int, list[tuple[int, ...]]] = {}
    for t in uniq:
        by_first.setdefault(t[0], []).append(t[1:])
    merged: dict[tuple, set[int]] = {}
    for v, rest in by_first.items():
        merged.setdefault(tuple(_fold(rest)), set()).add(v)
    return [(frozenset(vs),) + sub for key, vs in merged.items() for sub in key]


def _split(name: str) -> tuple[tuple[str | None, ...], tuple[int, ...]]:
    comps = name.split(".")
    skeleton = tuple(None if _INT.fullmatch(c) else c for c in comps)
    return skeleton, tuple(int(c) for c in comps if _INT.fullmatch(c))


def _render(skeleton: Sequence[str | None], sets: Sequence[frozenset]) -> str:
    it = iter(sets)
    return r"\.".join(int_regex(next(it)) if c is None else re.escape(c) for c in skeleton)


def name_patterns(names: Iterable[str]) -> list[str]:
    """Unanchored patterns (to be full-matched) whose union is exactly `names`, in first-seen order."""
    groups: dict[tuple, list[tuple[int, ...]]] = {}
    for n in names:
        skel, nums = _split(n)
        groups.setdefault(skel, []).append(nums)
    items = [(skel, sets) for skel, tuples in groups.items() for sets in _fold(tuples)]
    shared: dict[tuple, list[tuple[str, ...]]] = {}  # (prefix through last slot, slot sets) -> tails
    alone: list[tuple[tuple, tuple]] = []
    order: list[tuple] = []
    for skel, sets in items:
        last = max((i for i, c in enumerate(skel) if c is None), default=None)
        if last is None or last == len(skel) - 1:
            key = ("alone", skel, sets)
            alone.append((skel, sets))
        else:
            key = ("shared", skel[:last + 1], sets)
            shared.setdefault(key, []).append(tuple(skel[last + 1:]))
        if key not in order:
            order.append(key)
    out = []
    for key in order:
        kind, skel, sets = key
        if kind == "alone":
            out.append(_render(skel, sets))
            continue
        tails = [r"\.".join(re.escape(c) for c in tail) for tail in shared[key]]
        tail = tails[0] if len(tails) == 1 else "(?:" + "|".join(tails) + ")"
        out.append(_render(skel, sets) + r"\." + tail)
    return out


def names_regex(names: Iterable[str]) -> str:
    """One anchored regex (`^...$`) that full-matches exactly `names` (see the module docstring)."""
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("names_regex needs at least one name")
    pats = name_patterns(names)
    regex = "^" + (pats[0] if len(pats) == 1 else "(?:" + "|".join(pats) + ")") + "$"
    missed = [n for n in names if not re.fullmatch(regex, n)]
    if missed:  # cannot happen by construction; guard the invariant anyway
        raise RuntimeError(f"names_regex misses {missed[:3]}")
    return regex
