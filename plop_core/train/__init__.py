"""LoRA finetuning on a placement: SFT (`train_sft`) and GRPO (`train_grpo`), plus math rewards.

Imports are lazy so `plop_core.train.rewards` (used by evaluation) does not pull in TRL.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "train_sft": "plop_core.train.sft",
    "train_grpo": "plop_core.train.grpo",
    "TrainResult": "plop_core.train.common",
    "format_reward": "plop_core.train.rewards",
    "correctness_reward": "plop_core.train.rewards",
    "extract_final_number": "plop_core.train.rewards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'plop_core.train' has no attribute {name!r}")
