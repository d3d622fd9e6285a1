"""plop_core: Precise LoRA Placement (PLoP) as a plain library (no Prefect, no Ray).

    from plop_core import auto_lora_config, load_model
    lm = load_model("smollm2-135m-instruct")                      # offline asset, local path or hub id
    config, report = auto_lora_config(lm.model, lm.tokenizer, "gsm8k", k=3, r=16)   # the one call
    print(report); report.save("out/")                            # adapter_config.json PEFT loads as is

    # the same, step by step:
    from plop_core import sample_task, score_nfn, select_placement, write_adapter_config
    sample = sample_task("gsm8k", n=128, seed=0)
    scores = score_nfn(lm.model, lm.tokenizer, sample.texts, max_length=256)
    placement = select_placement(scores, strategy="plop", k=3)
    placement.to_lora_config(r=16, lora_alpha=32)                 # a peft.LoraConfig naming exact modules
    write_adapter_config(placement, "out/", r=16)                 # adapter_config.json + targets.md

Names are imported lazily so `import plop_core` (and the CLI's start) stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "auto_lora_config": "plop_core.auto",
    "LoraReport": "plop_core.auto",
    "write_adapter_config": "plop_core.peft_files",
    "score_nfn": "plop_core.nfn",
    "Scores": "plop_core.nfn",
    "select_placement": "plop_core.placement",
    "placement_from_types": "plop_core.placement",
    "Placement": "plop_core.placement",
    "match_rank": "plop_core.placement",
    "discover_candidates": "plop_core.modules",
    "load_model": "plop_core.models",
    "fetch_asset": "plop_core.assets",
    "list_assets": "plop_core.assets",
    "get_task": "plop_core.data",
    "list_tasks": "plop_core.data",
    "sample_task": "plop_core.data",
    "run_serial": "plop_core.units",
    "SweepConfig": "plop_core.config",
    "load_sweep_config": "plop_core.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'plop_core' has no attribute {name!r}")


def __dir__():
    return __all__
