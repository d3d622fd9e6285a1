"""`TaskSpec` (a finetuning/scoring dataset, never called a "task" class) and the registry of named specs.

Why: scoring, SFT, GRPO and evaluation all need the same rows rendered consistently: a scoring text
(question + answer), an SFT prompt/response pair (chat messages when the tokenizer has a template), a
GRPO/eval prompt with its reference answer, and choices for multiple choice. A `TaskSpec` bundles the
sources (packaged offline copy, hub id, or a local file), the honest split story, the rendering and the
metric, so every stage reads one definition.

Splits: where a source only ships one split (e.g. GSM8K test offline), `train` and `eval` are carved
from it by a hash of the row id (`train_share`, default 80/20): deterministic on any machine,
disjoint, and stable when rows are added or reordered.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from plop_core.config import METRICS
from plop_core.data.sources import (
    DataSourceError,
    HubSource,
    OfflineSource,
    SourceCache,
    hub_is_offline,
    offline_hub_message,
)

SOURCES = ("auto", "offline", "hub", "local")
CARVED_SPLITS = ("train", "eval")


class UnknownTaskError(KeyError, ValueError):
    """An unknown task name; the message lists the known names."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def carve_bucket(salt: str, row_id: str) -> float:
    """Position of a row in [0, 1) from sha256(salt, id): the basis of the train/eval carve."""
    h = hashlib.sha256(f"plop-split\x00{salt}\x00{row_id}".encode()).hexdigest()
    return int(h[:12], 16) / float(16**12)


@dataclass(eq=False)
class TaskSpec:
    """A named dataset with its sources, splits, rendering and metric (see module docstring).

    Rendering invariants: `text(row) == plain_prompt(row) + response_joiner + response`, `sft_pair(row) ==
    (prompt(row), response)`, and for multiple choice `choices(row)[reference(row)] == response`.
    """

    name: str
    description: str
    family: str
    metric: Literal[METRICS]  # how held-out rows are judged (plop_core.config.METRICS, all implemented)
    prompt_fn: Callable[[dict], str]
    response_fn: Callable[[dict], str]
    reference_fn: Callable[[dict], Any]
    choices_fn: Callable[[dict], list[str]] | None = None
    text_fn: Callable[[dict], str] | None = None
    offline: OfflineSource | None = None
    hub: HubSource | None = None
    local: Callable[[], dict[str, list[dict]]] | None = None
    split_map: dict[str, dict[str, str]] = field(default_factory=dict)
    carve_from: dict[str, str] = field(default_factory=dict)
    train_share: float = 0.8
    split_note: str = ""
    category_column: str | None = None
    answer_prefix: str = "Answer:"
    response_joiner: str = " "
    split_salt: str | None = None
    source_detail: dict[str, str] = field(default_factory=dict)
    _cache: SourceCache = field(default_factory=SourceCache, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: metric {self.metric!r} is not one of {METRICS}")

    # ---- sources and splits -------------------------------------------------------------------
    def available_sources(self) -> list[str]:
        return [k for k, v in (("offline", self.offline), ("hub", self.hub), ("local", self.local)) if v]

    def resolve_source(self, source: str = "auto") -> str:
        """'auto' -> the hub when online and the task has a hub id, else the offline copy / local file."""
        if source not in SOURCES:
            raise ValueError(f"source {source!r} is not one of {SOURCES}")
        if source == "auto":
            if self.local:
                return "local"
            if self.hub and not hub_is_offline():
                return "hub"
            if self.offline:
                return "offline"
            if self.hub:
                raise DataSourceError(offline_hub_message(self.hub.id))
            raise DataSourceError(f"task {self.name!r} has no source")
        if source == "hub" and self.hub and hub_is_offline():
            fix_task = self.name if self.offline else None
            raise DataSourceError(offline_hub_message(self.hub.id, fix_task))
        if source not in self.available_sources():
            raise DataSourceError(f"task {self.name!r} has no {source} source; available: {self.available_sources()}")
        return source

    def native_splits(self, source: str = "auto") -> dict[str, list[dict]]:
        kind = self.resolve_source(source)
        if kind not in self._cache.loaded:
            loader = {"offline": self.offline.load if self.offline else None,
                      "hub": self.hub.load if self.hub else None, "local": self.local}[kind]
            splits = loader()
            for split, rows in splits.items():
                _check_ids(self.name, split, rows)
            self._cache.loaded[kind] = splits
        return self._cache.loaded[kind]

    def splits(self, source: str = "auto") -> list[str]:
        """Split names `load` accepts for this source (native ones, mapped ones, carved train/eval)."""
        kind = self.resolve_source(source)
        native = list(self.native_splits(kind))
        names = native + [s for s in self.split_map.get(kind, {}) if s not in native]
        if kind in self.carve_from:
            names += [s for s in CARVED_SPLITS if s not in names]
        return names

    def load(self, split: str = "train", source: str = "auto") -> list[dict]:
        """Rows of one split (copies; each has a stable string `id`)."""
        kind = self.resolve_source(source)
        native = self.native_splits(kind)
        mapped = self.split_map.get(kind, {}).get(split)
        if mapped is not None:
            rows = native[mapped]
        elif split in native:
            rows = native[split]
        elif split in CARVED_SPLITS and kind in self.carve_from:
            salt = self.split_salt or self.name
            want_train = split == "train"
            rows = [r for r in native[self.carve_from[kind]]
                    if (carve_bucket(salt, r["id"]) < self.train_share) == want_train]
        else:
            raise ValueError(f"task {self.name!r} has no split {split!r} ({kind} source); "
                             f"available: {self.splits(kind)}. {self.split_note}".strip())
        if not rows:
            raise DataSourceError(f"task {self.name!r} split {split!r} ({kind} source) is empty; "
                                  "check the data file or choose another split")
        return [dict(r) for r in rows]

    def describe_source(self, source: str = "auto") -> dict[str, str]:
        """Provenance of a source: kind plus package name/version, hub id, or file path and sha256."""
        kind = self.resolve_source(source)
        out = {"source": kind}
        if kind == "offline" and self.offline:
            out.update(package=self.offline.package[0], package_version=self.offline.package[1])
        elif kind == "hub" and self.hub:
            out.update(hub_id=self.hub.id, hub_configs=",".join(str(c) for c in self.hub.configs))
        out.update(self.source_detail if kind == "local" else {})
        return out

    # ---- rendering --------------------------------------------------------------------------
    def prompt(self, row: dict) -> str:
        """The user prompt (GRPO prompt, evaluation prompt, SFT user message)."""
        return self.prompt_fn(row)

    def response(self, row: dict) -> str:
        """The gold response (SFT target; the answer part of the scoring text)."""
        return self.response_fn(row)

    def plain_prompt(self, row: dict) -> str:
        """The prompt for models without a chat template: prompt, newline, answer prefix."""
        return f"{self.prompt(row)}\n{self.answer_prefix}" if self.answer_prefix else self.prompt(row)

    def text(self, row: dict) -> str:
        """Scoring text: the question and its answer in one plain string (or a file's text column)."""
        if self.text_fn is not None:
            return self.text_fn(row)
        return f"{self.plain_prompt(row)}{self.response_joiner}{self.response(row)}"

    def sft_pair(self, row: dict) -> tuple[str, str]:
        return self.prompt(row), self.response(row)

    def sft_example(self, row: dict, tokenizer: Any = None) -> dict:
        """TRL prompt-completion example (loss on the completion only): chat messages when the
        tokenizer has a chat template, else plain strings (`plain_prompt`, joiner + response)."""
        prompt, response = self.sft_pair(row)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return {"prompt": [{"role": "user", "content": prompt}],
                    "completion": [{"role": "assistant", "content": response}]}
        return {"prompt": self.plain_prompt(row), "completion": self.response_joiner + response}

    def grpo_example(self, row: dict, tokenizer: Any = None) -> dict:
        """TRL GRPO example: prompt (messages with a chat template, else plain) and the `answer` column
        read by `plop_core.train.rewards` (the reference as a string)."""
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            prompt: Any = [{"role": "user", "content": self.prompt(row)}]
        else:
            prompt = self.plain_prompt(row)
        return {"prompt": prompt, "answer": str(self.reference(row)), "id": row["id"]}

    def reference(self, row: dict) -> Any:
        """The answer: a number (gsm8k, arithmetic), the final answer string (math), the choice index
        (multiple choice), or the reference code (code)."""
        return self.reference_fn(row)

    def choices(self, row: dict) -> list[str]:
        """Candidate responses of a multiple-choice row; `choices(row)[reference(row)] == response`."""
        if self.choices_fn is None:
            raise ValueError(f"task {self.name!r} is not multiple choice (metric {self.metric!r}); it has no choices")
        return self.choices_fn(row)

    def category(self, row: dict) -> str | None:
        return None if self.category_column is None else str(row.get(self.category_column))

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "metric": self.metric,
                "sources": self.available_sources(), "hub_id": self.hub.id if self.hub else None,
                "category": self.category_column, "description": self.description, "splits": self.split_note}


def _check_ids(task: str, split: str, rows: list[dict]) -> None:
    seen: set[str] = set()
    for r in rows:
        rid = r.get("id")
        if not isinstance(rid, str):
            raise DataSourceError(f"task {task!r} split {split!r}: a row has no string id ({rid!r})")
        if rid in seen:
            raise DataSourceError(f"task {task!r} split {split!r}: duplicate row id {rid!r}; "
                                  "ids must be unique (give an id column with unique values)")
        seen.add(rid)


# ---- the registry ---------------------------------------------------------------------------
_FACTORIES: dict[str, Callable[[], TaskSpec]] = {}
_INSTANCES: dict[str, TaskSpec] = {}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


def register_task(name: str) -> Callable[[Callable[[], TaskSpec]], Callable[[], TaskSpec]]:
    """Decorator registering a zero-argument factory that builds the named `TaskSpec`."""
    if not _NAME_RE.match(name):
        raise ValueError(f"task name {name!r} must be lower-case letters, digits, '_', '-' or '.'")

    def deco(factory: Callable[[], TaskSpec]) -> Callable[[], TaskSpec]:
        _FACTORIES[name] = factory
        _INSTANCES.pop(name, None)
        return factory

    return deco


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_FACTORIES)


def get_task(name: str | TaskSpec) -> TaskSpec:
    """The registered `TaskSpec` of that name (built once per process, so loaded rows are reused)."""
    if isinstance(name, TaskSpec):
        return name
    if name not in _FACTORIES:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}. "
                               "A local .jsonl/.csv/.parquet file also works (see `plop tasks show FILE`)")
    if name not in _INSTANCES:
        spec = _FACTORIES[name]()
        if spec.name != name:
            raise ValueError(f"factory registered as {name!r} built a spec named {spec.name!r}")
        _INSTANCES[name] = spec
    return _INSTANCES[name]
