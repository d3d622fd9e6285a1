"""The canonical LoRA module-type names (q k v qkv o gate up gate_up down): the one definition.

Why a torch-free module of its own: the configuration schema validates explicit arms like `q,v` against
these names before any model is loaded, and importing torch (seconds) for a config check would slow every
`plop` command. `module_roles` (role inference), `modules` (discovery) and `placement` import them here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FUSED_TYPES = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
TYPE_ORDER = ("q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down")
READS_HIDDEN = {"q", "k", "v", "qkv", "gate", "up", "gate_up"}
WRITES_HIDDEN = {"o", "down"}
TYPE_SEPARATORS = (",", "+")  # 'q,v' (configs) and 'q+v' (the compare CLI) name the same explicit arm


def split_types(text: str) -> list[str]:
    """The type names of an explicit arm ('q,v', 'q+v' or one name), in the order given, blanks dropped."""
    for sep in TYPE_SEPARATORS[1:]:
        text = text.replace(sep, TYPE_SEPARATORS[0])
    return [t.strip() for t in text.split(TYPE_SEPARATORS[0]) if t.strip()]


@dataclass(frozen=True)
class Part:
    """One canonical part of a fused module: its type and the exact output rows it owns."""

    type: str
    rows: tuple[int, ...] = field(repr=False)

    def runs(self) -> list[tuple[int, int]]:
        """The rows as half-open [start, stop) runs (compact, JSON-able)."""
        out: list[list[int]] = []
        for r in self.rows:
            if out and out[-1][1] == r:
                out[-1][1] = r + 1
            else:
                out.append([r, r + 1])
        return [(a, b) for a, b in out]

    @classmethod
    def from_runs(cls, type: str, runs) -> Part:
        return cls(type, tuple(i for a, b in runs for i in range(int(a), int(b))))
