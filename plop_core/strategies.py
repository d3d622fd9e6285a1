"""The placement strategies (`STRATEGIES`): the one definition of their names and of how each picks types.

Why a torch-free module of its own: the configuration schema builds its `strategy` Literal and checks
sweep arms from these names before any model is loaded; `placement` (which needs torch through module
discovery) re-exports them. Each strategy picks among a model's placeable types; see `placement`'s
docstring for what each one means on fused (qkv / gate_up) models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from plop_core.module_types import TYPE_ORDER

ATTN_BASELINE = ("q", "k", "v", "qkv")
MLP_BASELINE = ("gate", "up", "gate_up", "down")
_ORDER = {t: i for i, t in enumerate(TYPE_ORDER)}  # ties in NFN: canonical type order


@dataclass(frozen=True)
class Strategy:
    name: str
    needs_scores: bool
    uses_k: bool
    description: str
    pick: Callable[[list[str], dict[str, float] | None, int, int], list[str]]


def _lowest(types, nfn, k, seed):
    return sorted(types, key=lambda t: (nfn[t], _ORDER[t]))[:k]


def _highest(types, nfn, k, seed):
    return sorted(types, key=lambda t: (-nfn[t], _ORDER[t]))[:k]


def _subset(wanted, label):
    def pick(types, nfn, k, seed):
        out = [t for t in types if t in wanted]
        if not out:
            raise ValueError(f"strategy {label!r}: the model has none of the types {list(wanted)} "
                             f"(placeable: {types}); choose another strategy or explicit types")
        return out
    return pick


def _random(types, nfn, k, seed):
    rng = np.random.default_rng(seed)
    return [str(t) for t in rng.choice(np.array(types), size=k, replace=False)]


def _peft_default(types, nfn, k, seed):
    if "q" in types and "v" in types:
        return ["q", "v"]
    if "qkv" in types:
        return ["qkv"]
    raise ValueError(f"strategy 'peft_default' needs q and v (or a fused qkv); placeable types: {types}")


STRATEGIES: dict[str, Strategy] = {s.name: s for s in [
    Strategy("plop", True, True, "k types with the lowest NFN (PLoP)", _lowest),
    Strategy("plop_inverse", True, True, "k types with the highest NFN", _highest),
    Strategy("attn", False, False, "q, k, v (fused: qkv)", _subset(ATTN_BASELINE, "attn")),
    Strategy("mlp", False, False, "gate, up, down (fused: gate_up, down; no gate: up, down)",
             _subset(MLP_BASELINE, "mlp")),
    Strategy("all", False, False, "every placeable type", lambda types, nfn, k, seed: list(types)),
    Strategy("random", False, True, "k types drawn with default_rng(seed)", _random),
    Strategy("peft_default", False, False, "q, v (fused: qkv), PEFT's default", _peft_default),
]}
