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

`Placement.to_lora_config` sets PEFT's `task_type`, `base_model_name_or_path` and `revision` from the model
(read by discovery, `peft_facts`) and names the modules exactly: a list of full module names when there
are at most `max_listed` (64) of them, else one short anchored regex (`name_patterns.names_regex`, layer
indices folded into exact integer ranges, one branch per type) that PEFT full-matches; packed MoE experts
go to `target_parameters` (full parameter names); Conv1D sets `fan_in_fan_out`. A list is matched by PEFT
as whole names or dot-suffixes, so `check_targets` confirms on the model that a config reaches exactly
the placement's modules, and `match_report` checks a PEFT model put adapters on exactly them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from plop_core.module_types import FUSED_TYPES, TYPE_ORDER
from plop_core.modules import Candidate, Discovery
from plop_core.name_patterns import names_regex
from plop_core.strategies import STRATEGIES

_ORDER = {t: i for i, t in enumerate(TYPE_ORDER)}


# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """The chosen types and their exact modules. `nfn`: type-NFN of every placeable type, when known;
    `base_model`: what PEFT stores about the model (task_type, base_model_name_or_path, revision, ...)."""

    strategy: str
    types: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    k: int | None = None
    seed: int | None = None
    nfn: dict[str, float] | None = field(default=None, compare=False)
    base_model: dict | None = field(default=None, compare=False)

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
        """One anchored regex that full-matches exactly `target_modules` (see `name_patterns`)."""
        return names_regex(self.target_modules)

    def target_patterns(self) -> dict[str, str]:
        """Per type, an anchored regex full-matching exactly that type's target modules (for humans)."""
        by_type: dict[str, list[str]] = {}
        for c in self.candidates:
            if c.param is None:
                by_type.setdefault(c.type, []).append(c.name)
        return {t: names_regex(names) for t, names in by_type.items()}

    def to_lora_config(self, r: int, lora_alpha: int | None = None, lora_dropout: float = 0.0,
                       task_type: str | None = "auto", *, base_model_name_or_path: str | None = None,
                       revision: str | None = None, target_style: str = "auto", max_listed: int = 64, **kwargs):
        """A `peft.LoraConfig` naming exactly this placement's modules (alpha defaults to 2r).

        task_type: "auto" takes it from the model the placement was discovered on (CAUSAL_LM, SEQ_CLS,
        FEATURE_EXTRACTION, ...; None if unknown); base_model_name_or_path / revision likewise default to
        the model's. target_style: "list" (exact names), "regex" (one anchored regex), or "auto": a list up
        to `max_listed` names, else the regex. `kwargs` go to LoraConfig. With task_type SEQ_CLS PEFT also
        trains the classifier head (modules_to_save); `trainable_params` counts the LoRA weights only.
        """
        from peft import LoraConfig

        if int(r) < 1:
            raise ValueError(f"LoRA rank r={r} must be >= 1")
        if not self.candidates:
            raise ValueError("placement has no modules; build it with select_placement or placement_from_types")
        if target_style not in ("auto", "list", "regex"):
            raise ValueError(f"target_style={target_style!r}: use 'auto', 'list' or 'regex'")
        params = list(self.target_parameters)
        if params and lora_dropout:
            raise ValueError(f"lora_dropout={lora_dropout}: PEFT cannot apply dropout to packed MoE experts "
                             f"({params[0]}, ...); pass lora_dropout=0.0 or place types without experts")
        fan = any(c.kind == "conv1d" for c in self.candidates)
        if fan and params:
            raise ValueError("placement mixes Conv1D modules and packed experts; PEFT cannot use fan_in_fan_out "
                             "with target_parameters: place them in two adapters")
        facts = self.base_model or {}
        names = list(self.target_modules)
        as_regex = target_style == "regex" or (target_style == "auto" and len(names) > max_listed)
        targets = (self.target_regex() if as_regex else names) if names else []
        return LoraConfig(r=int(r), lora_alpha=int(2 * r if lora_alpha is None else lora_alpha),
                          lora_dropout=lora_dropout, fan_in_fan_out=fan,
                          task_type=facts.get("task_type") if task_type == "auto" else task_type,
                          base_model_name_or_path=base_model_name_or_path or facts.get("base_model_name_or_path"),
                          revision=revision or facts.get("revision"),
                          target_modules=targets, target_parameters=params or None, **kwargs)

    def check_targets(self, lora_config, model) -> list[str]:
        """The module names of `model` that PEFT would adapt with `lora_config` (PEFT's own matching rule);
        raises ValueError unless they are exactly this placement's target modules."""
        from peft.tuners.tuners_utils import check_target_module_exists

        root = model.get_base_model() if hasattr(model, "get_base_model") else model
        hit = [n for n, _ in root.named_modules() if n and check_target_module_exists(lora_config, n)]
        want = set(self.target_modules)
        extra, missing = sorted(set(hit) - want), sorted(want - set(hit))
        if missing or extra:
            raise ValueError(f"LoraConfig.target_modules reaches {len(hit)} modules, the placement has {len(want)}: "
                             f"missing {missing[:3]}, extra {extra[:3]}; build the config with "
                             "Placement.to_lora_config(target_style='regex') on the model it was discovered on")
        return hit

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
                "trainable_params_per_rank": self.trainable_params(1), "base_model": self.base_model,
                "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, d: dict) -> Placement:
        if not isinstance(d, dict) or "candidates" not in d or "types" not in d:
            raise ValueError("not a placement dict: expected keys 'strategy', 'types', 'candidates' "
                             "(written by Placement.to_dict)")
        return cls(d.get("strategy", "explicit"), tuple(d["types"]),
                   tuple(Candidate.from_dict(c) for c in d["candidates"]), d.get("k"), d.get("seed"), d.get("nfn"),
                   d.get("base_model"))


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
    return Placement(strategy, tuple(types), tuple(discovery.for_types(types)), k, seed, nfn,
                     dict(discovery.base_model) if discovery.base_model else None)


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
