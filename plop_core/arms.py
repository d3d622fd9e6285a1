"""Finetuning arms: each arm's placement (per seed) and its LoRA rank at a matched trainable budget.

Why: the paper compares placements (plop, plop_inverse, attn, mlp, all, ...) at the same number of
trainable parameters by adjusting each arm's LoRA rank (e.g. attn at r=25 vs plop at r=16). An arm is a
strategy name (`plop_core.placement.STRATEGIES`) or explicit module types ('q,v' or 'q+v').

The `random` arm is redrawn per training seed: seed s trains the k types drawn with seed s, so its
mean over seeds averages over draws as well as over training noise (the paper's "random, averaged over
draws"). Every other arm is the same placement at every seed. `plop compare` and the sweeps both get
their placements from `arm_placements`, so the two agree for the same config.
"""

from __future__ import annotations

REFERENCE_ARM = "plop"


def arm_placement(arm: str, scores, discovery, k: int = 3, seed: int = 0):
    """The Placement of one arm: a strategy (random drawn with `seed`) or explicit types like 'q,v'."""
    from plop_core.config import canonical_arm
    from plop_core.placement import STRATEGIES, placement_from_types, select_placement

    if arm in STRATEGIES:
        if STRATEGIES[arm].needs_scores and scores is None:
            raise ValueError(f"arm {arm!r} needs NFN scores; score the model first")
        return select_placement(scores if scores is not None else discovery, arm, k=k, seed=seed)
    types = canonical_arm(arm)
    if "," in types or types in discovery.types:
        return placement_from_types(discovery, types, strategy=arm)
    raise ValueError(f"unknown arm {arm!r}; use a strategy ({', '.join(STRATEGIES)}) or explicit types like 'q,v' "
                     f"(placeable here: {', '.join(discovery.types)})")


def arm_placements(arms: list[str], seeds: list[int], scores, discovery, k: int = 3) -> dict[str, dict[int, object]]:
    """{arm: {seed: Placement}}: `random` drawn with each training seed, every other arm fixed (seed 0)."""
    out: dict[str, dict[int, object]] = {}
    for arm in arms:
        fixed = None if arm == "random" else arm_placement(arm, scores, discovery, k, seed=0)
        out[arm] = {int(s): fixed if fixed is not None else arm_placement(arm, scores, discovery, k, seed=int(s))
                    for s in seeds}
    return out


def budget_ranks(placements: dict, r: int, budget_match: bool = True, target: int | None = None) -> dict:
    """Rank per key of `placements`: matched to `target` trainable parameters (default: the reference
    arm's count at rank r), or r everywhere without budget matching."""
    from plop_core.placement import match_rank

    if target is None:
        ref = REFERENCE_ARM if REFERENCE_ARM in placements else next(iter(placements))
        target = placements[ref].trainable_params(r)
    out = {}
    for key, p in placements.items():
        rank = match_rank(p, target) if budget_match else r
        out[key] = {"rank": int(rank), "trainable_params": int(p.trainable_params(rank)), "target_params": int(target)}
    return out


def eval_instruction(method: str, grpo_system_prompt: str | None) -> str | None:
    """The instruction exact_match prompts carry: GRPO's answer-format instruction for GRPO runs, else None."""
    return grpo_system_prompt if method == "grpo" else None
