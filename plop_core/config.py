"""The one configuration schema (pydantic) behind the CLI, the flows and the deployments.

Why one schema: a sweep YAML, a `prefect deployment run --param`, and `plop score --flag` must mean
the same thing. Every section is a small model with defaults taken from the paper (scaled to the
hardware where noted); unknown keys are errors (`extra="forbid"`) so a typo never silently falls back
to a default. `load_sweep_config(path, overrides)` reads YAML and applies `key.sub=value` overrides.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Closed vocabularies. Strategy and module-type names are defined in their torch-free registries and only
# derived here; the ones below are defined here, once (the scorer and the CLI import them from this module).
ESTIMATORS = ("probe", "reference", "analytic")
DTYPES = ("float32", "bfloat16", "float16", "auto")
DATA_SOURCES = ("auto", "offline", "hub")
FINETUNE_METHODS = ("sft", "grpo", "none")
METRICS = ("nll", "exact_match", "multiple_choice")

from plop_core.config_rules import (  # noqa: E402, F401 (the rules use the vocabularies above; re-exports)
    STRATEGIES,
    ConfigError,
    _dedupe,
    _did_you_mean,
    _format_validation_error,
    _is_safe_name,
    _suggest_name,
    apply_overrides,
    canonical_arm,
    check_trainer_overrides,
    config_hash,
    model_label,
    task_label,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Strict):
    """Where a model comes from: a hub id, a local folder, or a named offline asset (see `plop assets list`)."""

    id: str = Field(description="hub id (org/name), local folder path, or offline asset name")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit); ignored for local paths")
    dtype: Literal[DTYPES] = Field(
        "float32", description="dtype the model is loaded in; scoring math is always fp32"
    )
    trust_remote_code: bool = Field(False, description="allow model code from the hub; off unless you ask")
    name: str | None = Field(None, description="short label used in paths and MLflow; default derived from id")
    device_map: str | None = Field(
        None, description="accelerate placement as in transformers' from_pretrained: auto (fill the devices up to "
        "max_memory, the rest offloaded to CPU RAM, then to offload_folder), cpu, cuda or cuda:N; None keeps the "
        "whole model in memory on one device (the default when it fits)")
    max_memory: dict[str, str] | None = Field(
        None, description="per-device budget for device_map auto, e.g. {cpu: 4GiB} or {cuda:0: 20GiB, cpu: 64GiB}; "
        "must hold at least the largest layer plus activations on the execution device")
    offload_folder: str | None = Field(
        None, description="folder for weights that fit in no device budget (disk offload); must be writable")

    @field_validator("max_memory", mode="before")
    @classmethod
    def _max_memory_sizes(cls, v: Any) -> Any:
        if isinstance(v, list):  # CLI style: ["cpu=4GiB", "cuda:0=20GiB"]
            v = dict(str(x).split("=", 1) if "=" in str(x) else (str(x), "") for x in v)
        if isinstance(v, dict):
            import re

            for dev, size in v.items():
                if not re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*([kmgtKMGT]i?[bB]|[bB])?\s*", str(size)):
                    raise ValueError(f"max_memory {dev}={size!r}: give a size like 4GiB, 500MB or 2GB")
                if not re.fullmatch(r"cpu|disk|mps|cuda|cuda:\d+|\d+", str(dev).strip().lower()):
                    raise ValueError(f"max_memory device {dev!r} is not cpu, cuda, cuda:N, N or mps")
            return {str(k): str(x) for k, x in v.items()}
        return v

    @field_validator("device_map")
    @classmethod
    def _device_map_known(cls, v: str | None) -> str | None:

        if v is not None and not re.fullmatch(r"auto|balanced|balanced_low_0|sequential|cpu|cuda|cuda:\d+|mps", v):
            raise ValueError(f"device_map {v!r} is not auto, balanced, sequential, cpu, cuda, cuda:N or mps")
        return v

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str | None) -> str | None:
        if v is not None and not _is_safe_name(v):
            raise ValueError(f"name {v!r} is not a safe folder name; use letters, digits, '.', '_', '-' "
                             f"(e.g. {_suggest_name(v)!r})")
        return v

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.id.rstrip("/").split("/")[-1]


class SamplingConfig(_Strict):
    n_samples: int = Field(128, ge=1, description="sequences drawn from the task for scoring")
    seed: int = Field(0, description="sampling seed: the same seed gives the same rows on any machine")
    max_length: int = Field(256, ge=1, description="tokens per sequence for scoring (longer ones are truncated)")
    split: str = Field("train", description="task split to sample from")
    allow_smaller: bool = Field(False, description="accept a source smaller than n_samples instead of failing")
    source: Literal[DATA_SOURCES] = Field(
        "auto", description="data source: hub when online else the packaged offline copy; pin one for reproducibility"
    )


class ScorerConfig(_Strict):
    estimator: Literal[ESTIMATORS] = Field("probe", description="baseline estimator of rho(W)")
    n_probe: int = Field(512, ge=8, description="unit vectors per weight for the `probe` estimator")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    seed: int = Field(0, description="seed of the random vectors (probe/reference) and the bootstrap")
    n_bootstrap: int = Field(1000, ge=0, description="bootstrap resamples over sequences (0 disables intervals)")
    ci_level: float = Field(0.95, gt=0, lt=1, description="confidence level of the per-type intervals")
    include_padding: bool = Field(False, description="reproduce the authors' code: average over padding tokens too")
    shards: int = Field(1, ge=1, description="split each cell's sample into this many contiguous shards, scored as "
                        "separate units (on different Ray workers) and merged exactly (plop_core/shards.py); "
                        "needs estimator probe or analytic and include_padding false")

    @model_validator(mode="after")
    def _shardable(self) -> ScorerConfig:
        if self.shards > 1 and (self.estimator == "reference" or self.include_padding):
            raise ValueError(f"shards={self.shards} needs estimator probe or analytic and include_padding false: the "
                             "reference estimator's random vectors and the authors' padding follow the batches; "
                             "set shards: 1")
        return self


class SelectionConfig(_Strict):
    strategy: Literal[STRATEGIES] = Field(
        "plop", description="placement strategy"
    )
    k: int = Field(3, ge=1, description="number of module types chosen by plop / plop_inverse / random")
    seed: int = Field(0, description="seed of the `random` strategy")


class LoraRecipe(_Strict):
    r: int = Field(16, ge=1, description="LoRA rank of the reference (plop) arm")
    lora_alpha: int | None = Field(None, description="LoRA alpha; default 2*r as in the paper")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout (the paper: 0 for SFT, 0.05 for GRPO); "
                                "must be 0 when packed MoE experts are placed")


class FinetuneConfig(_Strict):
    method: Literal[FINETUNE_METHODS] = Field("sft", description="finetuning method, or none to score only")
    arms: list[str] = Field(
        default_factory=lambda: ["plop", "attn", "mlp", "all"],
        min_length=1,
        description="strategies to compare, or explicit module-type lists like 'q,v' (or 'q+v')",
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0], min_length=1, description="training seeds per arm (non-negative, distinct)"
    )
    budget_match: bool = Field(True, description="choose each arm's rank to match the plop arm's trainable params")
    lora: LoraRecipe = Field(default_factory=LoraRecipe, description="LoRA rank, alpha and dropout of the reference arm")
    train_samples: int = Field(256, ge=1, description="training rows drawn from the task's train split")
    max_steps: int = Field(50, ge=1, description="optimizer steps per training run (short on CPU; the paper: 2 epochs)")
    learning_rate: float = Field(4e-4, gt=0, description="AdamW learning rate (the paper's SFT: 4e-4)")
    batch_size: int = Field(4, ge=1, description="per-device training batch (GRPO: rounded up to a multiple of "
                            "num_generations)")
    max_length: int = Field(512, ge=8, description="SFT: tokens per training example (prompt + completion), longer "
                            "ones truncated")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of the steps spent warming up the learning rate "
                                "(the paper: 0.1)")
    lr_scheduler_type: str = Field("cosine", description="learning-rate schedule (the paper: cosine)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    num_generations: int = Field(4, ge=2, description="GRPO completions per prompt")
    max_completion_length: int = Field(64, ge=1, description="GRPO completion tokens")
    grpo_learning_rate: float | None = Field(
        None, gt=0, description="GRPO learning rate (the paper: 5e-6); default: learning_rate"
    )
    grpo_temperature: float = Field(1.0, gt=0, description="GRPO sampling temperature")
    rewards: list[str] = Field(
        default_factory=lambda: ["format", "correctness"], description="GRPO rewards (plop_core.train.rewards)"
    )
    grpo_system_prompt: str | None = Field(
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The Assistant first thinks about the reasoning process and then gives the final answer. The reasoning "
        "process and the answer are enclosed within <think> </think> and <answer> </answer> tags, respectively, "
        "i.e., <think> reasoning process here </think><answer> final answer here </answer>. "
        "The final answer is a single number.",
        description="instruction asking for the <think>/<answer> format the GRPO rewards check: a system message "
        "with a chat template, else prefixed to the prompt; also used for exact_match of GRPO runs; None: off",
    )
    keep_adapters: bool = Field(True, description="keep each run's LoRA adapter (PEFT folder, logged to MLflow); "
                                "false deletes it once the run is evaluated, so records hold metrics only (studies); "
                                "not part of the unit key")
    overrides: dict[str, Any] = Field(default_factory=dict, description="extra TRL config keys passed through")

    @field_validator("arms")
    @classmethod
    def _arms_known(cls, arms: list[str]) -> list[str]:
        return _dedupe("arm", [canonical_arm(a) for a in arms])

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct(cls, seeds: list[int]) -> list[int]:
        return _dedupe("seed", seeds)

    @field_validator("rewards")
    @classmethod
    def _rewards_known(cls, rewards: list[str]) -> list[str]:
        from plop_core.train.rewards import REWARDS  # light: no TRL, no torch

        for r in rewards:
            if r not in REWARDS:
                raise ValueError(f"unknown GRPO reward {r!r}{_did_you_mean(r, REWARDS)}; known: {', '.join(REWARDS)}")
        return rewards

    @model_validator(mode="after")
    def _overrides_are_trainer_fields(self) -> FinetuneConfig:
        if self.overrides and self.method != "none":
            check_trainer_overrides(self.method, self.overrides)
        return self


class EvalConfig(_Strict):
    metrics: list[Literal[METRICS]] = Field(
        default_factory=lambda: ["nll"], description="metrics; nll is cheap and low-variance on CPU"
    )
    n_samples: int = Field(64, ge=1, description="held-out rows evaluated (disjoint from training rows)")
    max_new_tokens: int = Field(256, ge=1, description="generation budget for exact_match")
    ci_level: float = Field(0.95, gt=0, lt=1, description="confidence level of every metric interval")
    n_bootstrap: int = Field(1000, ge=0, description="bootstrap resamples over rows for nll intervals")
    rel_tol: float = Field(1e-4, ge=0, description="relative tolerance of exact_match numeric comparison")
    batch_size: int = Field(8, ge=1, description="rows per forward pass (or generation batch) in evaluation")


class ResourcesConfig(_Strict):
    cpus_per_cell: float = Field(1, gt=0, description="Ray CPUs reserved per scoring/finetune task")
    gpus_per_cell: float = Field(0, ge=0, description="Ray GPUs reserved per scoring/finetune task")
    memory_gb_per_cell: float | None = Field(None, gt=0, description="Ray memory reservation per task (GiB)")
    ray_address: str | None = Field(None, description="Ray cluster address; default: $RAY_ADDRESS or local Ray")
    use_ray: bool = Field(True, description="run cells on Ray (False: Prefect's process pool); `plop sweep` only: a "
                          "deployment's flow always uses its Ray task runner (local Ray, or RAY_ADDRESS)")


class OutputsConfig(_Strict):
    root: str = Field("results", description="results root: Parquet dataset, MLflow store, PNGs; a local folder or "
                      "s3://bucket/prefix (credentials and endpoint from the AWS_* environment; docs/deploy.md)")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI; default $MLFLOW_TRACKING_URI or sqlite under root "
                                   "(an s3:// root: under its local staging folder)")
    experiment: str = Field("plop", description="MLflow experiment name")

    @field_validator("root")
    @classmethod
    def _root_is_a_folder_or_bucket(cls, v: str) -> str:
        from plop_core.storage import check_root

        return check_root(v)

    @field_validator("experiment")
    @classmethod
    def _experiment_stays_in_root(cls, v: str) -> str:
        # the name becomes <root>/mlartifacts/<name>: it must be one folder name, not a path out of the root
        if not v.strip() or v.strip(".") == "" or any(c in v for c in "/\\\0") or Path(v).is_absolute():
            raise ValueError(f"experiment {v!r} must be a plain name, not a path (no '/', '\\', '..' or absolute "
                             f"paths): its artifacts go under the results root; e.g. {_suggest_name(v)!r}")
        return v


class SweepConfig(_Strict):
    """A sweep: models x tasks, scored, selected, optionally finetuned and evaluated."""

    name: str = Field("sweep", description="sweep name (MLflow parent run, Prefect flow-run name)")
    models: list[ModelSpec] = Field(min_length=1, description="models to score: hub ids, local folders or offline "
                                    "assets (a bare string is an id)")
    tasks: list[str] = Field(min_length=1, description="task names (`plop tasks list`) or local data files")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="how scoring texts are drawn")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig, description="NFN scoring: estimator, batching, "
                                 "bootstrap")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="which module types get LoRA")
    finetune: FinetuneConfig = Field(default_factory=lambda: FinetuneConfig(method="none"),
                                     description="prove the placement: LoRA SFT/GRPO arms; off (method none) "
                                     "unless set")
    finetune_tasks: list[str] | None = Field(None, description="tasks to finetune on; default all tasks")
    evaluation: EvalConfig = Field(default_factory=EvalConfig, description="held-out evaluation of finetuned arms")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="CPUs, GPUs and memory per "
                                       "cell; Ray or a process pool")
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="where results go: Parquet, MLflow, "
                                   "PNGs")

    # the JSON schema (a deployment's parameter schema, checked by the Prefect server) admits the bare strings too
    @field_validator("models", mode="before", json_schema_input_type=Annotated[list[ModelSpec | str], Field(min_length=1)])
    @classmethod
    def _models_as_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"id": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("tasks", "finetune_tasks")
    @classmethod
    def _tasks_distinct(cls, tasks: list[str] | None) -> list[str] | None:
        if tasks is None:
            return None
        for i, t in enumerate(tasks):
            if not str(t).strip():
                raise ValueError(f"tasks[{i}] is empty; give a task name (`plop tasks list`) or a data file")
        labels: dict[str, int] = {}
        for i, t in enumerate(tasks):
            label = task_label(t).casefold()
            if label in labels:
                j = labels[label]
                same = "are the same task" if tasks[j] == t else f"share the label {task_label(t)!r} used in paths"
                raise ValueError(f"tasks[{j}] ({tasks[j]!r}) and tasks[{i}] ({t!r}) {same}; list each task once "
                                 "(rename one of the files if they differ)")
            labels[label] = i
        return tasks

    @field_validator("models", mode="after")
    @classmethod
    def _models_distinct(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        seen: dict[str, int] = {}
        for i, m in enumerate(models):
            label = model_label(m, i)
            if label.casefold() in seen:
                j = seen[label.casefold()]
                raise ValueError(
                    f"models[{j}] (id {models[j].id!r}) and models[{i}] (id {m.id!r}) have the same label {label!r}, "
                    f"so their results would mix; give each a distinct `name:` (e.g. name: {label}-{i})")
            seen[label.casefold()] = i
        return models

    @model_validator(mode="after")
    def _shards_fit_the_sample(self) -> SweepConfig:
        if self.scorer.shards > self.sampling.n_samples:
            raise ValueError(f"scorer.shards={self.scorer.shards} is more than sampling.n_samples="
                             f"{self.sampling.n_samples}; lower scorer.shards")
        return self

    @model_validator(mode="after")
    def _finetune_tasks_known(self) -> SweepConfig:
        if self.finetune_tasks:
            unknown = [t for t in self.finetune_tasks if t not in self.tasks]
            if unknown:
                raise ValueError(f"finetune_tasks {unknown} are not in tasks {self.tasks}; add them to `tasks`")
        return self


def load_sweep_config(source: str | Path | dict, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep YAML (or dict), apply `key=value` overrides, validate with readable errors."""
    import yaml

    if isinstance(source, dict):
        data, where = source, "the given dict"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"sweep config {str(path)!r} not found; see deploy/sweeps/ for examples")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
        where = str(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (name, models, tasks, ...)")
    data = apply_overrides(data, overrides)
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, where)) from None


def sweep_names(folder: str | Path) -> list[str]:
    """The committed sweep configs in `folder`: the stems of its `*.yaml` files, sorted."""
    folder = Path(folder)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.is_file()) if folder.is_dir() else []


def named_sweep_path(name: str, folder: str | Path) -> Path:
    """The sweep YAML `<folder>/<name>.yaml` for a name given by a user (a deployment parameter).

    Why so strict: the name comes from whoever may create flow runs, and the file is read on a worker, so
    it must be a bare file name inside `folder` (no '/', no '..', no symlink out of it)."""
    folder = Path(folder).resolve()
    stem = str(name).removesuffix(".yaml")
    known = sweep_names(folder)
    if not _is_safe_name(stem) or stem != Path(stem).name:
        raise ConfigError(f"sweep {name!r} must be the bare name of a file in {folder} (no '/' or '..'); "
                          f"known: {', '.join(known) or 'none'}")
    path = folder / f"{stem}.yaml"
    if not path.is_file():
        raise ConfigError(f"sweep {name!r} is not in {folder}{_did_you_mean(stem, known)}; "
                          f"known: {', '.join(known) or 'none'}")
    if path.resolve().parent != folder:
        raise ConfigError(f"sweep {name!r} links outside {folder}; commit the config itself there")
    return path


def load_named_sweep(name: str, folder: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """`load_sweep_config` of the committed sweep `name` in `folder` (see `named_sweep_path`)."""
    return load_sweep_config(named_sweep_path(name, folder), overrides)
