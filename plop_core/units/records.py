"""Typed records of the units of work: what is planned (a unit) and what a finished unit wrote (a result).

Why records and not dicts: a unit carries everything its worker needs (the model spec and identity, the
task as configured, the configs, where to write) so nothing downstream recovers a task or a model from a
label, and every record is JSON (pydantic) so it crosses Ray, Prefect parameters and the results root
as data, never as a pickle. Units:

- `ScoringCell`  (model x task): score NFN, choose placements (and each finetune arm's placement).
- `ScoringShard` (cell x shard): with `scorer.shards` > 1, a part of the cell's sample; the cell merges them.
- `FinetuneRun`  (cell x arm x seed): LoRA-finetune one arm at its matched rank, evaluate held-out rows.
- `BaseEval`     (cell): the base model on the same held-out rows, the floor every arm is compared with.

Each unit has a `key` (a hash of everything that determines its numbers) and a `record` path; a unit
is done when `plop_core.units.results.load_done` accepts its record (see there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from plop_core.config import (
    EvalConfig,
    FinetuneConfig,
    ModelSpec,
    SamplingConfig,
    ScorerConfig,
    SelectionConfig,
)
from plop_core.units.layout import Layout


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Record):
    """A model resolved (asset fetched, weights hashed) but not loaded."""

    spec: ModelSpec
    name: str = Field(description="path-safe label (partition value, MLflow tag)")
    identity: dict[str, Any] = Field(description="source, id, path, revision, sha256, dtype")
    identity_key: str = Field(description="hash of the identity: what makes two models the same weights")

    @property
    def source(self) -> str:
        """What `load_model` / training load: the resolved folder, else the hub id."""
        return self.identity.get("path") or self.identity["id"]


class SampleRef(_Record):
    """A task's scoring sample, drawn once (deterministic in its seed) and written as Parquet."""

    task: str = Field(description="the task as configured: a registry name or a data file path")
    task_name: str = Field(description="path-safe label of the task")
    sample_hash: str
    path: str = Field(description="the sample's Parquet file, relative to the layout root")
    n_rows: int
    sampling: SamplingConfig
    n_chars: int | None = Field(None, description="characters of the texts, each capped at 4 x max_length: the "
                                "scoring cost the runners order units by (longest first)")


class ScoringCell(_Record):
    """One (model, task) cell: score, select the placement and every finetune arm's placement."""

    kind: Literal["cell"] = "cell"
    run_name: str = Field(description="the sweep (or `plop score` / `plop compare`) that planned it")
    key: str
    layout: Layout
    model: ModelRef
    sample: SampleRef
    scorer: ScorerConfig
    selection: SelectionConfig
    strategies: list[str] = Field(description="strategies recorded in the placements table")
    arms: list[str] = Field(default_factory=list, description="finetune arms whose placements the cell decides")
    seeds: list[int] = Field(default_factory=list, description="finetune seeds (the random arm is drawn per seed)")
    r: int = 16
    lora_alpha: int | None = None

    @property
    def model_name(self) -> str:
        return self.model.name

    @property
    def task_name(self) -> str:
        return self.sample.task_name

    @property
    def cost(self) -> float:
        """Scoring cost estimate (the sample's capped characters; rows when unknown): units run longest first."""
        return float(self.sample.n_chars if self.sample.n_chars is not None else self.sample.n_rows)

    @property
    def dir(self) -> Path:
        return self.layout.unit_dir("cells", self.model_name, self.task_name, self.key)

    @property
    def record(self) -> Path:
        return self.dir / "record.json"


class ScoringShard(_Record):
    """Texts [start, stop) of a cell's sample, scored alone (`scorer.shards` > 1); the cell merges its shards.

    Its per-sequence statistics (the `sequences` table) are what the cell's `merge_scores` reads back."""

    kind: Literal["shard"] = "shard"
    key: str = Field(description="hash of the cell key and the shard's index and count")
    cell: ScoringCell
    index: int = Field(ge=0)
    n_shards: int = Field(ge=1)
    start: int = Field(ge=0)
    stop: int = Field(ge=1)

    @property
    def layout(self) -> Layout:
        return self.cell.layout

    @property
    def cost(self) -> float:
        """Scoring cost estimate: the shard's share of its cell's (units run longest first)."""
        return self.cell.cost * (self.stop - self.start) / max(1, self.cell.sample.n_rows)

    @property
    def model(self) -> ModelRef:
        return self.cell.model

    @property
    def model_name(self) -> str:
        return self.cell.model_name

    @property
    def task_name(self) -> str:
        return self.cell.task_name

    @property
    def record(self) -> Path:
        return self.cell.dir / "shards" / f"shard-{self.index}-of-{self.n_shards}.json"


class ShardResult(_Record):
    """What a scored shard wrote: its `sequences` Parquet file (per-sequence statistics) and where it ran."""

    kind: Literal["shard"] = "shard"
    key: str
    cell_key: str
    index: int
    n_shards: int
    start: int
    stop: int
    n_sequences: int
    n_tokens: int
    files: dict[str, str] = Field(description="name -> path relative to the layout root")
    model_loaded: bool = False
    load_seconds: float = 0.0
    seconds: float = 0.0
    runtime: dict[str, Any] = Field(default_factory=dict, description="host, pid, Ray node, Prefect runs, versions")


class CellResult(_Record):
    """What a scored cell wrote (`record.json`, last): numbers a report needs and the files it lists."""

    kind: Literal["cell"] = "cell"
    key: str
    model_name: str
    task_name: str
    model_identity: str
    identity: dict[str, Any]
    sample_hash: str
    config_hash: str
    code_version: str
    estimator: str
    types: list[dict[str, Any]] = Field(description="per-type NFN rows, lowest first")
    placement: dict[str, Any] = Field(description="the selection strategy's row of the placements table")
    placements: dict[str, list[str]] = Field(description="strategy -> chosen types")
    files: dict[str, str] = Field(description="name -> path relative to the layout root")
    meta: dict[str, Any] = Field(default_factory=dict)
    token_stats: dict[str, Any] = Field(default_factory=dict)
    model_loaded: bool = False
    load_seconds: float = 0.0
    seconds: float = 0.0
    runtime: dict[str, Any] = Field(default_factory=dict, description="host, pid, Ray node, Prefect runs, versions")


class _ExperimentUnit(_Record):
    """What the base evaluation and every (arm, seed) of an experiment share."""

    run_name: str
    key: str
    experiment_key: str
    layout: Layout
    model: ModelRef
    task: str
    task_name: str
    finetune: FinetuneConfig
    evaluation: EvalConfig
    eval_rows: str = Field(description="JSON file of held-out rows, relative to the layout root")

    @property
    def experiment_dir(self) -> Path:
        return self.layout.unit_dir("finetune", self.model.name, self.task_name, self.experiment_key)

    @property
    def record(self) -> Path:
        return self.dir / "record.json"


class FinetuneRun(_ExperimentUnit):
    """One (arm, seed) of an experiment: train from a fresh base at `rank`, evaluate on the held-out rows."""

    kind: Literal["arm"] = "arm"
    arm: str
    seed: int
    rank: int
    target_params: int
    placement: dict[str, Any] = Field(description="Placement.to_dict() of this arm (and seed, for random)")
    train_rows: str = Field(description="JSON file of training rows, relative to the layout root")

    @property
    def dir(self) -> Path:
        return self.experiment_dir / "runs" / f"{safe_arm(self.arm)}_seed{self.seed}"


class BaseEval(_ExperimentUnit):
    """The base model (no adapter) on the experiment's held-out rows."""

    kind: Literal["base"] = "base"

    @property
    def dir(self) -> Path:
        return self.experiment_dir / "base"


class RunResult(_Record):
    """A finished arm (or the base model): training summary, metrics with intervals, per-row values."""

    kind: Literal["arm", "base"]
    key: str
    arm: str
    seed: int
    types: str = ""
    rank: int = 0
    n_modules: int = 0
    trainable_params: int = 0
    target_params: int | None = None
    metrics: dict[str, float | int | None] = Field(description="flat: nll, nll_low, nll_high, nll_n, ...")
    per_row: dict[str, list[float]] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict, description="first/final loss, losses, steps, seconds, ...")
    files: dict[str, str] = Field(default_factory=dict)
    eval_s: float = 0.0
    runtime: dict[str, Any] = Field(default_factory=dict, description="host, pid, Ray node, Prefect runs, versions")

    def row(self) -> dict[str, Any]:
        """One flat row (runs table, `plop_core.comparison.summarize`)."""
        train = {k: v for k, v in self.train.items() if k not in ("curve", "train_summary")}  # the training table
        return {"arm": self.arm, "seed": self.seed, "types": self.types, "rank": self.rank,
                "n_modules": self.n_modules, "trainable_params": self.trainable_params,
                "target_params": self.target_params, **self.metrics, **train, "eval_s": self.eval_s}


class Experiment(_Record):
    """The finetuning part of a scored cell: its arms x seeds, the base evaluation and where rows live."""

    run_name: str
    key: str
    layout: Layout
    cell_key: str
    model_name: str
    task_name: str
    reference_params: int
    runs: list[FinetuneRun]
    base: BaseEval

    @property
    def dir(self) -> Path:
        return self.layout.unit_dir("finetune", self.model_name, self.task_name, self.key)

    @property
    def record(self) -> Path:
        return self.dir / "experiment.json"  # a flat folder holds the cell's record.json too


class ExperimentResult(_Record):
    """An experiment's summary: per-arm metric with interval, paired differences to plop, files."""

    kind: Literal["experiment"] = "experiment"
    key: str
    model_name: str
    task_name: str
    metric: str
    reference_params: int = Field(description="the budget: trainable parameters of the plop arm at lora.r")
    summary: list[dict[str, Any]]
    files: dict[str, str]


class Outcome(BaseModel):
    """A unit as the runner saw it: its result (fresh or cached) or the error that stopped it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    unit: ScoringCell | ScoringShard | FinetuneRun | BaseEval
    result: CellResult | ShardResult | RunResult | None = None
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


def safe_arm(arm: str) -> str:
    """An arm as a folder name ('q,v' -> 'q_v')."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in arm)
