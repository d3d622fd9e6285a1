"""Planning: a sweep config -> scoring cells; a scored cell -> its experiment (arms x seeds, base eval).

Nothing here loads a model or trains: models are resolved and hashed (`resolve_model`), samples are
drawn and written once (`draw_sample`), and every unit gets a key that hashes everything that
determines its numbers:

- cell key: model name and identity (weights sha256 + dtype, or hub id + revision), sample hash,
  scoring max_length, scorer and selection configs, the finetune arms (and seeds when `random` is an
  arm: its placement is drawn per seed), LoRA r/alpha, and the code version. The model *name* is in
  the key so the same weights listed under two names are two cells, reported under their own names.
- experiment key: the cell key + finetune and evaluation configs + code version; run key: + arm + seed.

The results root and the sweep name are not in any key: moving a root or renaming a sweep recomputes
nothing.
"""

from __future__ import annotations

import json

from plop_core import artifacts
from plop_core.config import STRATEGIES, ModelSpec, SamplingConfig, SweepConfig, config_hash, task_label
from plop_core.units.layout import Layout
from plop_core.units.records import (
    BaseEval,
    CellResult,
    Experiment,
    FinetuneRun,
    ModelRef,
    SampleRef,
    ScoringCell,
    ScoringShard,
)


def resolve_model(spec: ModelSpec | dict) -> ModelRef:
    """Identity of a model *without loading it*: resolves the source and hashes the weight files (cached)."""
    from plop_core.models import identity_key, resolve, weights_sha256

    spec = ModelSpec.model_validate(spec) if isinstance(spec, dict) else spec
    source, mid, folder = resolve(spec, progress=True)
    sha = weights_sha256(folder) if folder is not None else None
    ident = {"source": source, "id": mid, "path": str(folder) if folder else None, "revision": spec.revision,
             "sha256": sha, "dtype": spec.dtype, "task": "causal-lm"}
    return ModelRef(spec=spec, name=artifacts.safe_label(spec.label), identity=ident, identity_key=identity_key(ident))


def draw_sample(task: str, sampling: SamplingConfig | dict, layout: Layout, *, text_column: str | None = None) -> SampleRef:
    """Draw the task's scoring sample (deterministic in its seed) and write it once as Parquet."""
    from plop_core.data import resolve_task, sample_task

    sampling = SamplingConfig.model_validate(sampling) if isinstance(sampling, dict) else sampling
    spec = resolve_task(task, text_column=text_column) if text_column else resolve_task(task)
    sample = sample_task(spec, n=sampling.n_samples, seed=sampling.seed, split=sampling.split,
                         allow_smaller=sampling.allow_smaller, source=sampling.source)
    path = layout.sample_path(task_label(task), sample.sample_hash)
    if layout.kind == "flat" or not layout.exists(path):
        sample.to_parquet(path)
        layout.publish(path)
    return SampleRef(task=task, task_name=task_label(task), sample_hash=sample.sample_hash, path=layout.rel(path),
                     n_rows=len(sample.texts), sampling=sampling,
                     n_chars=sum(min(len(t), 4 * sampling.max_length) for t in sample.texts))


def finetune_arms(cfg: SweepConfig) -> tuple[list[str], list[int]]:
    """The arms and seeds whose placements a cell decides (none when the sweep does not finetune)."""
    if cfg.finetune.method == "none":
        return [], []
    return list(cfg.finetune.arms), [int(s) for s in cfg.finetune.seeds]


def cell_key(model: ModelRef, sample: SampleRef, cfg: SweepConfig) -> str:
    arms, seeds = finetune_arms(cfg)
    lora = cfg.finetune.lora
    return config_hash("score", model.name, model.identity_key, sample.sample_hash, cfg.sampling.max_length,
                       cfg.scorer, cfg.selection, arms, seeds if "random" in arms else [], lora.r, lora.lora_alpha,
                       artifacts.code_version())


def scoring_cells(cfg: SweepConfig, models: list[ModelRef], samples: dict[str, SampleRef], layout: Layout,
                  run_name: str | None = None) -> list[ScoringCell]:
    """One cell per (model, task), grouped by model (cells of one model run in one worker, one load)."""
    arms, seeds = finetune_arms(cfg)
    strategies = list(dict.fromkeys([cfg.selection.strategy, *(a for a in arms if a in STRATEGIES)]))
    return [ScoringCell(run_name=run_name or cfg.name, key=cell_key(m, samples[t], cfg), layout=layout, model=m,
                        sample=samples[t], scorer=cfg.scorer, selection=cfg.selection, strategies=strategies,
                        arms=arms, seeds=seeds, r=cfg.finetune.lora.r, lora_alpha=cfg.finetune.lora.lora_alpha)
            for m in models for t in cfg.tasks]


def cell_shards(cell: ScoringCell) -> list[ScoringShard]:
    """The shards of a cell (`scorer.shards` contiguous ranges of its sample); none when it is scored whole."""
    from plop_core.shards import shard_ranges

    n = cell.scorer.shards
    if n <= 1:
        return []
    try:
        ranges = shard_ranges(cell.sample.n_rows, n)
    except ValueError as e:
        raise ValueError(f"task {cell.sample.task!r}: {e}") from None
    return [ScoringShard(key=config_hash(cell.key, "shard", i, n), cell=cell, index=i, n_shards=n, start=a, stop=b)
            for i, (a, b) in enumerate(ranges)]


def plan_sweep(cfg: SweepConfig, layout: Layout | None = None, run_name: str | None = None) -> list[ScoringCell]:
    """Resolve every model, draw every task's sample, plan the cells (the serial runner's first step)."""
    layout = layout or Layout.hive(cfg.outputs.root)
    models = [resolve_model(m) for m in cfg.models]
    samples = {t: draw_sample(t, cfg.sampling, layout) for t in cfg.tasks}
    return scoring_cells(cfg, models, samples, layout, run_name)


# ---------------------------------------------------------------- experiments


def _eval_split(spec) -> str:
    names = spec.splits()
    for s in ("eval", "test", "validation"):
        if s in names:
            return s
    raise ValueError(f"task {spec.name!r} has no held-out split (eval/test/validation); splits: {names}")


def experiment_rows(spec, n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Training rows (train split) and held-out rows (eval split), disjoint by row id."""
    from plop_core.data import sample_task

    train = sample_task(spec, n=n_train, seed=seed, split="train", allow_smaller=True).rows
    ids = {r["id"] for r in train}
    held = [r for r in sample_task(spec, n=n_eval, seed=seed, split=_eval_split(spec), allow_smaller=True).rows
            if r["id"] not in ids]
    if not held:
        raise ValueError(f"task {spec.name!r}: no held-out rows disjoint from the {len(train)} training rows")
    return train, held


def experiment_key(cell_key: str, cfg: SweepConfig) -> str:
    """The key of a cell's finetuning experiment: the cell, the finetune and evaluation configs, the code."""
    ft_key = cfg.finetune.model_dump(mode="json", exclude={"keep_adapters"})  # what is kept changes no number
    return config_hash("finetune", cell_key, ft_key, cfg.evaluation, artifacts.code_version())


def run_key(experiment_key: str, arm: str, seed: int | None = None) -> str:
    """The key of one (arm, seed) run of an experiment; arm "base" (no seed) is the base model's evaluation."""
    return config_hash(experiment_key, "base") if arm == "base" else config_hash(experiment_key, arm, int(seed))


def finetune_wanted(cfg: SweepConfig, cell: ScoringCell) -> bool:
    return cfg.finetune.method != "none" and cell.sample.task in (cfg.finetune_tasks or cfg.tasks)


def plan_experiment(cell: ScoringCell, result: CellResult, cfg: SweepConfig) -> Experiment:
    """Each (arm, seed)'s placement and budget-matched rank, the train/held-out rows (JSON, written once),
    and the base evaluation. Ranks match the plop placement's trainable count at `finetune.lora.r`."""
    from plop_core.arms import REFERENCE_ARM, budget_ranks
    from plop_core.data import resolve_task
    from plop_core.placement import Placement

    ft, ev, lay = cfg.finetune, cfg.evaluation, cell.layout
    arm_pl = json.loads(lay.resolve(result.files["arm_placements"]).read_text())
    reference = Placement.from_dict(arm_pl[REFERENCE_ARM][str(ft.seeds[0])])  # the budget: plop at lora.r
    target = reference.trainable_params(ft.lora.r)
    key = experiment_key(cell.key, cfg)
    edir = lay.unit_dir("finetune", cell.model_name, cell.task_name, key)
    train_path, eval_path = edir / "train_rows.json", edir / "eval_rows.json"
    if not (lay.exists(train_path) and lay.exists(eval_path)):
        train, held = experiment_rows(resolve_task(cell.sample.task), ft.train_samples, ev.n_samples)
        artifacts.atomic_write_json(train_path, train)
        artifacts.atomic_write_json(eval_path, held)
        lay.publish(train_path, eval_path)
    common = dict(run_name=cell.run_name, experiment_key=key, layout=lay, model=cell.model, task=cell.sample.task,
                  task_name=cell.task_name, finetune=ft, evaluation=ev, eval_rows=lay.rel(eval_path))
    runs = []
    for seed in ft.seeds:  # seed-major: an interrupted sweep already compares every arm at its first seeds
        for arm in ft.arms:
            pl = arm_pl[arm][str(seed)]
            b = budget_ranks({arm: Placement.from_dict(pl)}, ft.lora.r, ft.budget_match, target=target)[arm]
            runs.append(FinetuneRun(key=run_key(key, arm, seed), arm=arm, seed=int(seed), rank=b["rank"],
                                    target_params=target, placement=pl, train_rows=lay.rel(train_path), **common))
    base = BaseEval(key=run_key(key, "base"), **common)
    return Experiment(run_name=cell.run_name, key=key, layout=lay, cell_key=cell.key, model_name=cell.model_name,
                      task_name=cell.task_name, reference_params=target, runs=runs, base=base)
