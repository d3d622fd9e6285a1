"""The serial runner: a whole sweep (or `plop compare`'s experiment) in this process, unit by unit.

    from plop_core.config import load_sweep_config
    from plop_core.units import run_serial
    manifest = run_serial(load_sweep_config("deploy/sweeps/quickstart.yaml"))

It reads top to bottom like the Prefect flow (`flows/sweep.py`), which runs exactly these units on Ray
and adds only orchestration: plan cells -> score each (done-rule first; a sharded cell's shards, then their exact merge) -> log to MLflow -> for each
cell of a finetune task plan its experiment -> evaluate the base and train each (arm, seed) ->
summarize -> write the report. No Prefect, no Ray: for the CLI (`plop sweep --serial`, `plop compare`),
notebooks and tests.
"""

from __future__ import annotations

import sys

from plop_core import atomic
from plop_core.config import SweepConfig
from plop_core.errors import interruption
from plop_core.units import plan, report, results, work
from plop_core.units.layout import Layout
from plop_core.units.records import Experiment, Outcome, ScoringCell
from plop_core.units.track import Tracker


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(f"plop: {msg}", file=sys.stderr, flush=True)


def _run(unit, fn, i: int, n: int, progress: bool, fresh: bool = False) -> Outcome:
    _say(f"[{i}/{n}] {report.describe(unit)} ...", progress)
    o = work.run_unit(unit, fn, fresh=fresh, progress=progress)
    _say(f"[{i}/{n}] {report.describe(unit)}: " + ("cached" if o.cached else "done" if o.ok else f"FAILED {o.error}"),
         progress)
    return o


def shards_to_run(cell: ScoringCell) -> list:
    """The cell's shards, unless the cell is done (its record lists its shards' files, so a lost shard file
    makes the cell not done: its shards run again through their own done-rule, then the merge)."""
    shards = plan.cell_shards(cell)
    return shards if shards and results.load_done(cell) is None else []


def after_shards(cell: ScoringCell, shards: list[Outcome]) -> Outcome | None:
    """The cell's outcome when one of its shards failed (it cannot be merged), else None (merge it)."""
    failed = [o for o in shards if not o.ok]
    if not failed:
        return None
    return Outcome(unit=cell, error="; ".join(f"shard {o.unit.index} of {o.unit.n_shards}: {o.error}" for o in failed))


def finish_experiment(exp: Experiment, base: Outcome, arms: list[Outcome], cfg: SweepConfig, cell: ScoringCell):
    """The experiment's summary once its base evaluation and every arm finished; None if any failed. When
    every one of them was cached and the summary is done, it is reused as it is: a rerun of a finished
    sweep rewrites nothing (its tables keep the `created_at` of the runs that made them)."""
    if not base.ok or not all(a.ok for a in arms):
        return None
    if base.cached and all(a.cached for a in arms) and (done := results.load_done(exp)) is not None:
        return done
    return results.write_experiment(exp, base.result, [a.result for a in arms], list(cfg.evaluation.metrics),
                                    cfg.evaluation.ci_level, cell.sample.sample_hash, cfg.scorer.estimator)


def run_serial(cfg: SweepConfig, *, layout: Layout | None = None, run_name: str | None = None, track: bool = True,
               progress: bool = True) -> dict:
    """Run every unit of `cfg` in this process; returns the manifest (also written under the root)."""
    layout = layout or Layout.hive(cfg.outputs.root)
    tracker = Tracker.start(cfg, "serial") if track else None
    try:
        cells = plan.plan_sweep(cfg, layout, run_name)
        outcomes, shard_outcomes = [], []
        for i, c in enumerate(cells):  # a sharded cell: its shards one after another, then the exact merge
            shards = [_run(s, work.score_shard, i + 1, len(cells), progress) for s in shards_to_run(c)]
            shard_outcomes += shards
            outcomes.append(after_shards(c, shards) or _run(c, work.score_cell, i + 1, len(cells), progress,
                                                            fresh=bool(shards)))
        run_ids = {o.unit.key: tracker.log_cell(o.result, layout, o.cached) for o in outcomes if o.ok and tracker}
        experiments = []
        for cell_outcome in [o for o in outcomes if o.ok and plan.finetune_wanted(cfg, o.unit)]:
            cell = cell_outcome.unit
            exp = plan.plan_experiment(cell, cell_outcome.result, cfg)
            units = [exp.base, *exp.runs]
            done = [_run(u, work.evaluate_base if u.kind == "base" else work.train_run, i + 1, len(units), progress)
                    for i, u in enumerate(units)]
            outcomes += done
            res = finish_experiment(exp, done[0], done[1:], cfg, cell)
            if res is not None:
                experiments.append(res)
                if tracker:
                    tracker.log_experiment(exp, [o.result for o in done[1:]], res, run_ids[cell.key])
        man = finish_sweep(cfg, layout, outcomes + shard_outcomes, run_ids, experiments, tracker)
    except BaseException as e:
        if tracker:
            tracker.end("KILLED" if interruption(e) else "FAILED", quiet=True)  # Ctrl-C / SIGTERM: KILLED
        raise
    return man


def finish_sweep(cfg: SweepConfig, layout: Layout, outcomes: list[Outcome], run_ids: dict, experiments: list,
                 tracker: Tracker | None, **extra) -> dict:
    """Summary markdown + manifest under the root, logged on the parent MLflow run, which ends FINISHED
    (or FAILED when a unit failed). Returns the manifest with `markdown`, `manifest` and `summary` paths."""
    uri = tracker.uri if tracker else ""
    # leftovers of writers that died mid-write (a killed worker or driver) go; live writers' files stay
    extra["temp_files_removed"] = [layout.rel(p) for p in atomic.remove_dead_temps(layout.base)]
    md = report.summary_markdown(cfg, layout, outcomes, run_ids, uri, experiments)
    man = report.manifest(cfg, layout, outcomes, run_ids, uri, experiments,
                          mlflow_parent_run_id=tracker.parent_run_id if tracker else None, **extra)
    man["manifest"], man["summary"] = report.write_sweep_report(layout, cfg.name, md, man)
    man["markdown"] = md
    if tracker:
        tracker.log_summary(man["summary"], layout.resolve(experiments[0].files["chart"]) if experiments else None)
        tracker.end("FAILED" if man["failed"] else "FINISHED")
    return man
