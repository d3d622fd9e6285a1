"""Where LoRA goes: placement strategies, the `Placement` record, exact PEFT configs and budget matching.

Why: PLoP's output is a set of module *types*; a finetuning run needs the exact modules, a `LoraConfig`
that PEFT cannot silently mis-apply, and arms compared at a matched trainable-parameter budget.

Strategies (registry `STRATEGIES`; all select among the model's *placeable* types `Discovery.types`,
i.e. whole modules: Phi-3/GPT-2/GPT-NeoX have qkv, o, (gate_up | up), down; BERT q, k, v, o, up, down):
- `plop`: the k placeable types with the lowest type-NFN (the paper's rule); `plop_inverse`: k highest.
- `attn`: q, k, v (the paper's attention baseline, o excluded); on fused models the whole qkv module.
- `mlp`: gate, up, down; fused gate_up + down; BERT / GPT-2 / GPT-NeoX (no gate): up + down.
- `all`: every placeable type; `random`: k types drawn with numpy's default_rng(seed), reproducible.
- `peft_default`: q, v (PEFT's default for Llama-like and BERT); on fused models qkv, as PEFT's own
  default for Phi-3 / GPT-2 / GPT-NeoX (a fused module cannot be split between adapted and frozen).
Ties in NFN are broken by canonical type order (q k v qkv o gate up gate_up down).

`Placement.to_lora_config` names modules with ONE anchored regex (PEFT full-matches a string target,
whereas a list of names is matched by suffix and could over-match, e.g. inside a multimodal wrapper);
packed MoE experts go to `target_parameters` (full parameter names); Conv1D sets `fan_in_fan_out`.
`match_report` checks a PEFT model put adapters on exactly the placement's modules.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from plop_core.module_types import FUSED_TYPES, TYPE_ORDER
from plop_core.modules import Candidate, Discovery
from plop_core.strategies import STRATEGIES

_ORDER = {t: i for i, t in enumerate(TYPE_ORDER)}


# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """The chosen types and their exact modules. `nfn`: type-NFN of every placeable type, when known."""

    strategy: str
    types: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    k: int | None = None
    seed: int | None = None
    nfn: dict[str, float] | None = field(default=None, compare=False)

    @property
    def target_modules(self) -> tuple[str, ...]:
        """Exact module names (Linear / Conv1D / per-expert Linear) for PEFT `target_modules`."""
        return tuple(c.name for c in self.candidates if c.param is None)

    @property
    def target_parameters(self) -> tuple[str, ...]:
        """Full names of packed expert parameters for PEFT `target_parameters`."""
        return tuple(c.name for c in self.candidates if c.param is not None)

    def trainable_params(self, r: int) -> int:
        """LoRA parameters at rank r exactly as PEFT counts them (A and B, no bias, no modules_to_save)."""
        return sum(c.lora_params(r) for c in self.candidates)

    def target_regex(self) -> str:
        """One regex that full-matches exactly `target_modules` (layer indices folded into alternations)."""
        groups: dict[str, list[str]] = {}
        for c in self.candidates:
            if c.param is not None:
                continue
            comps = c.name.split(".")
            slot = next((i for i, s in enumerate(comps) if s == str(c.layer)), None)
            if slot is None:
                groups.setdefault(re.escape(c.name), [])
                continue
            key = ".".join(comps[:slot]) + "\0" + ".".join(comps[slot + 1:])
            groups.setdefault(key, []).append(str(c.layer))
        pats = []
        for key, layers in groups.items():
            if "\0" not in key:
                pats.append(key)
                continue
            pre, post = key.split("\0")
            alt = "|".join(sorted(set(layers), key=int))
            pats.append(rf"{re.escape(pre)}\.(?:{alt})" + (rf"\.{re.escape(post)}" if post else ""))
        regex = "(?:" + "|".join(sorted(pats)) + ")"
        bad = [n for n in self.target_modules if not re.fullmatch(regex, n)]
        if bad:  # cannot happen by construction; guard the invariant anyway
            raise RuntimeError(f"target regex misses {bad[:3]}")
        return regex

    def to_lora_config(self, r: int, lora_alpha: int | None = None, lora_dropout: float = 0.0,
                       task_type: str | None = None, **kwargs):
        """A `peft.LoraConfig` naming exactly this placement's modules (alpha defaults to 2r)."""
        from peft import LoraConfig

        if int(r) < 1:
            raise ValueError(f"LoRA rank r={r} must be >= 1")
        if not self.candidates:
            raise ValueError("placement has no modules; build it with select_placement or placement_from_types")
        params = list(self.target_parameters)
        if params and lora_dropout:
            raise ValueError(f"lora_dropout={lora_dropout}: PEFT cannot apply dropout to packed MoE experts "
                             f"({params[0]}, ...); pass lora_dropout=0.0 or place types without experts")
        fan = any(c.kind == "conv1d" for c in self.candidates)
        if fan and params:
            raise ValueError("placement mixes Conv1D modules and packed experts; PEFT cannot use fan_in_fan_out "
                             "with target_parameters: place them in two adapters")
        return LoraConfig(r=int(r), lora_alpha=int(2 * r if lora_alpha is None else lora_alpha),
                          lora_dropout=lora_dropout, task_type=task_type, fan_in_fan_out=fan,
                          target_modules=self.target_regex() if self.target_modules else [],
                          target_parameters=params or None, **kwargs)

    def match_report(self, peft_model, adapter_name: str = "default"):
        """Per-module DataFrame (layer, type, kind, module, adapted, lora_params, in_placement) of a PEFT
        model; raises ValueError if a target got no adapter or a module outside the placement got one."""
        import pandas as pd
        from peft.tuners.lora import LoraLayer, ParamWrapper

        root = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
        adapted: dict[str, int] = {}
        for name, mod in root.named_modules():
            if not isinstance(mod, LoraLayer) or adapter_name not in mod.lora_A:
                continue
            base = re.sub(r"(^|\.)base_layer(?=\.|$)", "", name).lstrip(".")
            if isinstance(mod, ParamWrapper):
                base = f"{base}.{mod.parameter_name}"
            adapted[base] = sum(p.numel() for m in (mod.lora_A[adapter_name], mod.lora_B[adapter_name])
                                for p in m.parameters())
        rows = [dict(layer=c.layer, type=c.type, kind=c.kind, module=c.name, adapted=c.name in adapted,
                     lora_params=adapted.get(c.name, 0), in_placement=True) for c in self.candidates]
        mine = {c.name for c in self.candidates}
        extra = sorted(set(adapted) - mine)
        rows += [dict(layer=-1, type="?", kind="?", module=n, adapted=True, lora_params=adapted[n],
                      in_placement=False) for n in extra]
        df = pd.DataFrame(rows).sort_values(["in_placement", "layer", "type"], ascending=[False, True, True],
                                            key=lambda s: s.map(_ORDER) if s.name == "type" else s)
        missing = [c.name for c in self.candidates if c.name not in adapted]
        if missing:
            raise ValueError(f"{len(missing)} of {len(self.candidates)} placement targets got no LoRA adapter "
                             f"(e.g. {missing[:3]}); build the config with Placement.to_lora_config on the same "
                             "model class the placement was discovered on")
        if extra:
            raise ValueError(f"{len(extra)} modules outside the placement got adapters (e.g. {extra[:3]}); the "
                             "LoraConfig over-matched: build it with Placement.to_lora_config")
        return df.reset_index(drop=True)

    def to_dict(self) -> dict:
        return {"schema": 1, "strategy": self.strategy, "types": list(self.types), "k": self.k, "seed": self.seed,
                "nfn": None if self.nfn is None else {t: float(v) for t, v in self.nfn.items()},
                "target_modules": list(self.target_modules), "target_parameters": list(self.target_parameters),
                "trainable_params_per_rank": self.trainable_params(1),
                "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: dict) -> Placement:
        if not isinstance(d, dict) or "candidates" not in d or "types" not in d:
            raise ValueError("not a placement dict: expected keys 'strategy', 'types', 'candidates' "
                             "(written by Placement.to_dict)")
        return cls(d.get("strategy", "explicit"), tuple(d["types"]),
                   tuple(Candidate.from_dict(c) for c in d["candidates"]), d.get("k"), d.get("seed"), d.get("nfn"))


# ----------------------------------------------------------------------------------------------------------


def _type_nfn(scores, placeable: list[str]) -> dict[str, float]:
    df = getattr(scores, "types", None)
    if df is None or not hasattr(df, "columns") or not {"type", "nfn"} <= set(df.columns) or len(df) == 0:
        raise ValueError("scores has no per-type table (.types with columns 'type' and 'nfn'); pass the Scores "
                         "returned by plop_core.nfn.score_nfn")
    nfn = {str(t): float(v) for t, v in zip(df["type"], df["nfn"])}
    missing = [t for t in placeable if t not in nfn or not math.isfinite(nfn[t])]
    if missing:
        raise ValueError(f"scores lack a finite NFN for placeable types {missing} (have {sorted(nfn)}); score the "
                         "same model with the same Discovery")
    return {t: nfn[t] for t in placeable}


def check_k(discovery: Discovery, strategy: str, k) -> None:
    """Fail early (before any scoring) when `k` does not fit this model's placeable types."""
    if strategy in STRATEGIES and STRATEGIES[strategy].uses_k:
        placeable = discovery.types
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(placeable):
            raise ValueError(f"k={k!r} must be an integer in 1..{len(placeable)} (the placeable types of this model: "
                             f"{', '.join(placeable)})")


def select_placement(scores, strategy: str = "plop", k: int = 3, seed: int = 0) -> Placement:
    """Choose module types by `strategy` (see STRATEGIES) and return the exact Placement.

    scores: a `Scores` (uses `.types` and `.discovery`); strategies that need no scores also accept a
    `Discovery`. k: number of types for plop / plop_inverse / random (1 <= k <= placeable types).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown placement strategy {strategy!r}; known: {', '.join(STRATEGIES)} "
                         "(or use placement_from_types for an explicit list)")
    strat = STRATEGIES[strategy]
    disc = scores if isinstance(scores, Discovery) else getattr(scores, "discovery", None)
    if not isinstance(disc, Discovery):
        raise ValueError("scores has no .discovery (a Discovery); pass the Scores returned by score_nfn, or a "
                         "Discovery for strategies that need no scores")
    placeable = disc.types
    nfn = None
    if strat.needs_scores:
        if isinstance(scores, Discovery):
            raise ValueError(f"strategy {strategy!r} needs NFN scores; pass the Scores from score_nfn")
        nfn = _type_nfn(scores, placeable)
    elif not isinstance(scores, Discovery) and getattr(scores, "types", None) is not None:
        try:
            nfn = _type_nfn(scores, placeable)
        except ValueError:
            nfn = None
    check_k(disc, strategy, k)
    chosen = strat.pick(placeable, nfn, int(k) if strat.uses_k else 0, int(seed))
    return placement_from_types(disc, chosen, strategy=strategy, k=int(k) if strat.uses_k else None,
                                seed=int(seed) if strategy == "random" else None, nfn=nfn)


def placement_from_types(discovery: Discovery, types, strategy: str = "explicit", *, k: int | None = None,
                         seed: int | None = None, nfn: dict[str, float] | None = None) -> Placement:
    """A Placement of explicit types (list or "q,v") on a Discovery."""
    if isinstance(types, str):
        types = [t.strip() for t in types.split(",") if t.strip()]
    types = list(dict.fromkeys(types or []))
    placeable = discovery.types
    if not types:
        raise ValueError(f"no module types given; choose from {', '.join(placeable)}")
    for t in types:
        if t in placeable:
            continue
        fused = next((f for f, parts in FUSED_TYPES.items() if t in parts), None)
        if fused in placeable:
            raise ValueError(f"type {t!r} is part of the fused module type {fused!r} in this model; LoRA adapts "
                             f"whole modules, so place {fused!r} (placeable: {', '.join(placeable)})")
        raise ValueError(f"unknown module type {t!r} for this model; placeable: {', '.join(placeable)}")
    types = sorted(types, key=_ORDER.get)
    return Placement(strategy, tuple(types), tuple(discovery.for_types(types)), k, seed, nfn)


def trainable_params(placement, r: int) -> int:
    """LoRA parameters at rank r of a Placement (or an iterable of Candidates), exactly as PEFT counts them."""
    cands = placement.candidates if isinstance(placement, Placement) else placement
    return sum(c.lora_params(r) for c in cands)


def match_rank(placement: Placement, target_params: int, max_rank: int = 512, ranks=None) -> int:
    """The LoRA rank whose trainable-parameter count on `placement` is closest to `target_params`.

    Counts are linear in r, so this is round(target / params_at_r1) clipped to the allowed ranks
    (`ranks`, default 1..max_rank). Ties (equally close above and below) go to the LOWER rank, so a
    matched arm never exceeds the budget because of a tie.
    """
    per = placement.trainable_params(1)
    if per <= 0:
        raise ValueError("placement has no trainable parameters; it names no modules")
    if not isinstance(target_params, (int, np.integer, float)) or target_params <= 0:
        raise ValueError(f"target_params={target_params!r} must be a positive number of parameters")
    allowed = sorted({int(r) for r in (ranks if ranks is not None else range(1, int(max_rank) + 1))})
    if not allowed or allowed[0] < 1:
        raise ValueError("ranks must be positive integers (e.g. range(1, 513))")
    return min(allowed, key=lambda r: (abs(r * per - target_params), r))
