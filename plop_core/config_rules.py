"""The rules the configuration schema checks with: safe names, explicit arms, labels, TRL override keys;
and the schema's helpers: `config_hash`, `ConfigError` and its messages, `--set` overrides.

Why a module of its own: `config.py` is the schema a reader scans field by field; the rules behind its
validators (and the labels the results layout uses) live here, next to nothing else, and import only the
vocabularies (module types, strategies), never torch.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from plop_core.module_types import TYPE_ORDER, split_types
from plop_core.strategies import STRATEGIES as _STRATEGY_REGISTRY

STRATEGIES = tuple(_STRATEGY_REGISTRY)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _is_safe_name(text: str) -> bool:
    return bool(_SAFE_NAME.fullmatch(text)) and not text.endswith(".")


def _suggest_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "my-name"


def _did_you_mean(word: str, known) -> str:
    near = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _dedupe(what: str, items: list) -> list:
    seen = set()
    for x in items:
        if x in seen:
            raise ValueError(f"{what} {x!r} is listed twice; list each {what} once")
        seen.add(x)
    return items


def canonical_arm(arm: str) -> str:
    """An arm as the pipeline names it: a strategy name, or explicit types joined by ',' ('q+v' -> 'q,v').
    Raises ValueError naming the unknown part and the known names, before any model is loaded."""
    arm = str(arm).strip()
    if arm in STRATEGIES:
        return arm
    types = split_types(arm)
    unknown = [t for t in types if t not in TYPE_ORDER]
    if not types or unknown:
        bad = unknown[0] if unknown else arm
        hint = _did_you_mean(bad, STRATEGIES + TYPE_ORDER)
        raise ValueError(f"unknown arm {arm!r}{hint}: use a strategy ({', '.join(STRATEGIES)}) or module types "
                         f"joined by ',' or '+' from {', '.join(TYPE_ORDER)} (e.g. 'q,v')")
    return ",".join(dict.fromkeys(types))


def model_label(spec, index: int | None = None) -> str:
    """The folder-safe label of a model in results paths; raises ValueError saying to add `name:` when the
    id gives none (e.g. id '..' or '/')."""
    from plop_core.artifacts import safe_label  # the one sanitising rule (pyarrow import, so lazy)

    try:
        return safe_label(spec.label)
    except ValueError:
        where = f"models[{index}]" if index is not None else "model"
        raise ValueError(f"{where}: id {spec.id!r} gives no usable folder name; add `name: my-model` "
                         "(letters, digits, '.', '_', '-')") from None


def task_label(task: str) -> str:
    """The folder-safe label of a task in results paths: its registry name, or a data file's stem."""
    from plop_core.artifacts import safe_label

    p = Path(task)
    return safe_label(p.stem if p.suffix else task)


def check_trainer_overrides(method: str, overrides: dict[str, Any]) -> None:
    """Each `finetune.overrides` key must be a field of the trainer's config class (trl.SFTConfig or
    trl.GRPOConfig): a typo would otherwise fail only when training starts, after scoring."""
    import dataclasses

    import trl  # lazy and only when overrides are given: TRL takes seconds to import

    cls = {"sft": trl.SFTConfig, "grpo": trl.GRPOConfig}[method]
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in overrides:
        if key not in fields:
            raise ValueError(f"override {key!r} is not a field of trl.{cls.__name__} (method {method}){_did_you_mean(key, fields)}; "
                             f"see the TRL docs for {cls.__name__}, or remove it")


# ---------------------------------------------------------------- hashing, errors, --set overrides


def config_hash(*parts: BaseModel | dict | str | int | float | None) -> str:
    """Stable short hash of configs and values (sorted JSON), used in cache keys and provenance."""
    norm = [p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts]
    return hashlib.sha256(json.dumps(norm, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A configuration that does not validate; the message names each field and what to change."""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling (see `plop sweep --help` or docs/config.md)"
        elif e["type"] == "missing":
            msg = "required field is missing; add it"
        # value errors raised by our validators already quote the offending value
        show_input = e["type"] not in ("missing", "value_error")
        head = "  - " if loc == "(top level)" and not show_input else f"  - {loc}: "  # the message names its field
        lines.append(f"{head}{msg} (got {e.get('input')!r})" if show_input else f"{head}{msg}")
    return "\n".join(lines)


def _parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. sampling.n_samples=64)")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` strings (values parsed as YAML) to a nested dict, returning a new dict."""
    data = json.loads(json.dumps(data))
    for text in overrides or []:
        path, value = _parse_override(text)
        node = data
        for p in path[:-1]:
            node = node.setdefault(p, {}) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {p!r} is not a section; set the whole value instead "
                                  f"(e.g. --set '{'.'.join(path[:path.index(p) + 1])}=[...]')")
        node[path[-1]] = value
    return data
