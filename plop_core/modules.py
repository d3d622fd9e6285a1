"""Placement candidates: which modules of a model can take LoRA, and what role each plays.

STUB (to be generalised): name-based discovery of Llama-style q/k/v/o/gate/up/down Linear layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

CANONICAL_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
_NAME_TO_TYPE = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
                 "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


@dataclass(frozen=True)
class Part:
    type: str
    rows: tuple[int, ...] = field(repr=False)


@dataclass(frozen=True)
class Candidate:
    name: str
    layer: int
    type: str
    d_in: int
    d_out: int
    kind: str = "linear"
    parts: tuple["Part", ...] = ()
    param: str | None = None


@dataclass
class Discovery:
    candidates: list[Candidate]
    unmatched: list[tuple[str, str]] = field(default_factory=list)

    @property
    def types(self) -> list[str]:
        seen = []
        for c in self.candidates:
            if c.type not in seen:
                seen.append(c.type)
        return seen

    def report(self) -> str:
        return f"{len(self.candidates)} candidates of types {self.types}; {len(self.unmatched)} unmatched"


def discover_candidates(model: nn.Module, overrides: dict[str, str] | None = None) -> Discovery:
    cands = []
    for name, mod in model.named_modules():
        leaf = name.split(".")[-1]
        if isinstance(mod, nn.Linear) and leaf in _NAME_TO_TYPE:
            m = re.search(r"\.(\d+)\.", name)
            cands.append(Candidate(name, int(m.group(1)) if m else 0, _NAME_TO_TYPE[leaf],
                                   mod.in_features, mod.out_features))
    if not cands:
        raise ValueError("no placement candidates found")
    return Discovery(cands)


def get_weight(model: nn.Module, cand: Candidate) -> torch.Tensor:
    return model.get_submodule(cand.name).weight.detach().float()
