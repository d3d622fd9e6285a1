"""The work of each unit, done one way: score a cell, train an arm, evaluate the base model.

Every function takes a unit record and returns its result record, after writing the unit's files
through `plop_core.units.results` (record last). The serial runner calls them in a loop; the Prefect
tasks call the same functions on Ray workers. `run_unit` applies the done-rule first, so a finished
unit is never recomputed.

A `ModelCache` keeps models loaded across units: the sweep flow's Ray actors own one each, other
processes share `loaded_model`'s. `MODEL_LOADS` counts real loads so runners can report (and tests
assert) how many happened. With `scorer.shards` > 1 a cell's sample is scored as `ScoringShard` units
(`score_shard`, per-sequence statistics) and `score_cell` merges them exactly (plop_core/shards.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable

from plop_core.units import plan, results
from plop_core.units.records import BaseEval, FinetuneRun, Outcome, ScoringCell, ScoringShard

MODEL_LOADS: list[str] = []  # identity keys loaded by this process, in order
MODEL_CACHE_SIZE = int(os.environ.get("PLOP_MODEL_CACHE_SIZE", "1"))


class ModelCache:
    """Models loaded by their holder, by identity key (LRU of `size`, default 1 to bound memory).

    A Ray actor of the sweep flow owns one (the model stays loaded across the shards and cells that actor
    scores); `loaded_model` uses this process's default one (serial runner, process pools). A spec with
    device_map / max_memory / offload_folder is planned for this batch and length first (accelerate's
    big-model loading; the budget check knows the activations it must leave room for)."""

    def __init__(self, size: int | None = None):
        self.size = max(1, size or MODEL_CACHE_SIZE)
        self.models: OrderedDict[str, object] = OrderedDict()

    def get(self, model, batch_size: int = 8, max_length: int = 256):
        key = model.identity_key
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        from plop_core.models import load_model, plan_loading

        while len(self.models) >= self.size:
            self.models.popitem(last=False)
        spec = model.spec
        plan = (plan_loading(spec, batch_size=batch_size, max_length=max_length, progress=False)
                if spec.device_map or spec.max_memory or spec.offload_folder else None)
        lm = load_model(spec, progress=False, plan=plan)
        MODEL_LOADS.append(key)
        self.models[key] = lm
        return lm

    def clear(self) -> None:
        self.models.clear()


_PROCESS_CACHE = ModelCache()


def loaded_model(model, batch_size: int = 8, max_length: int = 256):
    """Load a `ModelRef` once per process (this process's `ModelCache`)."""
    return _PROCESS_CACHE.get(model, batch_size, max_length)


def clear_model_cache() -> None:
    """Forget the models this process holds (frees their memory; the next unit loads again)."""
    _PROCESS_CACHE.clear()


def run_unit(unit, work: Callable, fresh: bool = False, **kw) -> Outcome:
    """The done-rule, then the work: a finished unit's record is reused, a failed one is reported.
    `fresh`: the caller already found the unit not done (a sharded cell, whose shards ran in between)."""
    done = None if fresh else results.load_done(unit)
    if done is not None:
        return Outcome(unit=unit, result=done, cached=True)
    try:
        return Outcome(unit=unit, result=work(unit, **kw))
    except Exception as e:  # noqa: BLE001  (one unit's failure must not stop the others)
        return Outcome(unit=unit, error=f"{type(e).__name__}: {e}")


# ---------------------------------------------------------------- scoring


def _model_and_sample(unit, lm, models: ModelCache | None):
    """(loaded model, loaded now?, load seconds, discovery, sample) of a cell or a shard's cell."""
    from plop_core.data import Sample
    from plop_core.modules import discover_candidates
    from plop_core.placement import check_k

    cell = unit.cell if unit.kind == "shard" else unit
    t0 = time.perf_counter()
    n_loads = len(MODEL_LOADS)
    lm = lm or (models or _PROCESS_CACHE).get(cell.model, cell.scorer.batch_size, cell.sample.sampling.max_length)
    loaded, load_s = len(MODEL_LOADS) > n_loads, time.perf_counter() - t0
    discovery = discover_candidates(lm.model)
    check_k(discovery, cell.selection.strategy, cell.selection.k)
    sample = Sample.from_parquet(cell.layout.resolve(cell.sample.path))
    if sample.sample_hash != cell.sample.sample_hash:
        raise RuntimeError(f"the sample file of task {cell.sample.task!r} changed since it was planned; rerun")
    return lm, loaded, load_s, discovery, sample


def score_shard(shard: ScoringShard, progress: bool = False, lm=None, models: ModelCache | None = None):
    """Score texts [start, stop) of a cell's sample: per-sequence statistics only (the cell merges them)."""
    from plop_core.nfn import score_partial

    lm, loaded, load_s, discovery, sample = _model_and_sample(shard, lm, models)
    sc, max_length = shard.cell.scorer, shard.cell.sample.sampling.max_length
    t1 = time.perf_counter()
    part = score_partial(lm.model, lm.tokenizer, sample.texts[shard.start:shard.stop], start=shard.start,
                         batch_size=sc.batch_size, max_length=max_length, estimator=sc.estimator, seed=sc.seed,
                         n_probe=sc.n_probe, include_padding=sc.include_padding, candidates=discovery,
                         progress=progress)
    timing = {"model_loaded": loaded, "load_seconds": round(load_s, 3), "seconds": round(time.perf_counter() - t1, 3)}
    return results.write_shard(shard, part, timing)


def merged_shards(cell: ScoringCell, discovery):
    """The cell's scores merged from its shards' `sequences` files (each shard must be done), the shards'
    scoring seconds and their files."""
    from plop_core.shards import merge_scores

    parts, seconds, files = [], 0.0, {}
    for shard in plan.cell_shards(cell):
        done = results.load_done(shard)
        if done is None:
            raise RuntimeError(f"shard {shard.index} of {shard.n_shards} of this cell is not scored (no readable "
                               f"record {shard.layout.rel(shard.record)}); score its shards first")
        parts.append(results.read_shard(shard, done))
        seconds += done.seconds
        files[f"sequences_{shard.index}"] = done.files["sequences"]
    sc = cell.scorer
    return merge_scores(parts, discovery, n_bootstrap=sc.n_bootstrap, ci_level=sc.ci_level), seconds, files


def score_cell(cell: ScoringCell, progress: bool = False, lm=None, models: ModelCache | None = None):
    """Score one (model, task) cell: NFN on its sample (or merged from its shards when `scorer.shards` > 1),
    the placements, each arm's placement; write it all."""
    from plop_core.arms import REFERENCE_ARM, arm_placements
    from plop_core.nfn import score_nfn
    from plop_core.placement import select_placement

    lm, loaded, load_s, discovery, sample = _model_and_sample(cell, lm, models)
    sel, sc, sampling = cell.selection, cell.scorer, cell.sample.sampling
    t1 = time.perf_counter()
    if sc.shards > 1:  # the cell's record lists its shards' files: a lost one makes the cell merge again
        scores, shard_s, shard_files = merged_shards(cell, discovery)
    else:
        shard_s, shard_files = 0.0, {}
        scores = score_nfn(lm.model, lm.tokenizer, sample.texts, batch_size=sc.batch_size,
                           max_length=sampling.max_length, estimator=sc.estimator, seed=sc.seed, n_probe=sc.n_probe,
                           n_bootstrap=sc.n_bootstrap, ci_level=sc.ci_level, include_padding=sc.include_padding,
                           candidates=discovery, progress=progress)
    score_s = time.perf_counter() - t1 + shard_s  # sharded: the shards' scoring time plus the merge
    placements = {s: select_placement(scores, strategy=s, k=sel.k, seed=sel.seed) for s in cell.strategies}
    arms = list(dict.fromkeys([REFERENCE_ARM, *cell.arms])) if cell.arms else []
    arm_pl = arm_placements(arms, cell.seeds, scores, discovery, sel.k) if arms else {}
    timing = {"model_loaded": loaded, "load_seconds": round(load_s, 3), "seconds": round(score_s, 3)}
    return results.write_cell(cell, scores, placements, arm_pl, lm.model, lm.identity.to_dict(),
                              sample.token_stats(lm.tokenizer, sampling.max_length), timing, shard_files)


# ---------------------------------------------------------------- finetuning


def _rows(unit, rel: str) -> list[dict]:
    return json.loads(unit.layout.resolve(rel).read_text())


def _evaluate(model, tokenizer, unit, instruction):
    from plop_core.data import resolve_task
    from plop_core.evaluate import evaluate_model

    ev = unit.evaluation
    return evaluate_model(model, tokenizer, resolve_task(unit.task), _rows(unit, unit.eval_rows), ev.metrics,
                          batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, ci_level=ev.ci_level,
                          n_bootstrap=ev.n_bootstrap, rel_tol=ev.rel_tol, max_length=unit.finetune.max_length,
                          seed=0, instruction=instruction)


def train_run(run: FinetuneRun, progress: bool = False):
    """Finetune one (arm, seed) from a fresh base model at its rank, evaluate on the held-out rows."""
    from plop_core.arms import eval_instruction
    from plop_core.data import resolve_task
    from plop_core.placement import Placement
    from plop_core.train.common import load_fresh_model
    from plop_core.train.grpo import train_grpo
    from plop_core.train.sft import train_sft

    ft = run.finetune
    spec, pl = resolve_task(run.task), Placement.from_dict(run.placement)
    ratio = (ft.lora.lora_alpha / ft.lora.r) if ft.lora.lora_alpha is not None else 2.0
    lcfg = pl.to_lora_config(r=run.rank, lora_alpha=max(1, round(ratio * run.rank)),
                             lora_dropout=ft.lora.lora_dropout, task_type="CAUSAL_LM")
    base, tok = load_fresh_model(run.model.source)
    rows = _rows(run, run.train_rows)
    if ft.method == "grpo":
        res = train_grpo(base, tok, [spec.grpo_example(r, tok) for r in rows], lcfg, ft, run.dir, seed=run.seed,
                         keep_model=True, progress=progress)
    else:
        res = train_sft(base, tok, [spec.sft_example(r, tok) for r in rows], lcfg, ft, run.dir, seed=run.seed,
                        keep_model=True, progress=progress)
    del base
    er = _evaluate(res.model, tok, run, eval_instruction(ft.method, ft.grpo_system_prompt))
    d = res.to_dict()
    if not ft.keep_adapters and d.get("adapter_dir"):  # metrics only: the record then lists no adapter files
        shutil.rmtree(d["adapter_dir"], ignore_errors=True)
        d["adapter_dir"] = None
    rewards = d.get("rewards") or []
    train = {"first_loss": d["first_loss"], "final_loss": d["final_loss"], "losses": d["losses"],
             "mean_reward": float(sum(rewards) / len(rewards)) if rewards else None, "steps": d["steps"],
             "tokens_per_s": d["tokens_per_s"], "peak_mem_mb": d["peak_mem_mb"], "train_s": d["wall_s"],
             "adapter_dir": d["adapter_dir"], "curve": d["curve"], "train_summary": d["train_summary"]}
    extra = dict(arm=run.arm, seed=run.seed, types=",".join(pl.types), rank=run.rank,
                 n_modules=len(pl.target_modules), trainable_params=d["trainable_params"],
                 target_params=run.target_params)
    return results.write_run(run, train, er, extra)


def evaluate_base(unit: BaseEval, progress: bool = False, models: ModelCache | None = None):
    """The base model (no adapter) on the experiment's held-out rows, prompted as the arms are."""
    from plop_core.arms import eval_instruction

    lm = (models or _PROCESS_CACHE).get(unit.model)
    ft = unit.finetune
    er = _evaluate(lm.model, lm.tokenizer, unit, eval_instruction(ft.method, ft.grpo_system_prompt))
    return results.write_run(unit, {}, er, dict(arm="base", seed=-1))
