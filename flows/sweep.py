"""The sweep: models x tasks -> NFN scores and placements on Ray; then, for the cells of finetune tasks,
every (arm, seed) at a matched LoRA budget and the base model, evaluated; then the report.

Read top to bottom. Every step is a unit of `plop_core.units` (the same units `plop sweep --serial`
runs in one process); this flow adds only orchestration: Ray resources, retries, the done-rule shown
as `Cached` task runs, Prefect artifacts. `run_sweep` (flows/run.py, used by `plop sweep`) sets up the
Prefect API and Ray around it; a deployment (deploy/prefect.yaml) calls it directly on its server.

Errors (docs/reliability.md): preflight runs first; any failure ends the flow run Failed with one line
(`plop_core.errors.explain`, PLOP_DEBUG=1 raises with the traceback) and the MLflow parent run FAILED
(KILLED on Ctrl-C/SIGTERM); failed units end it Failed with every other unit's results written and named
in the summary (`UnitsFailed`).
"""

from __future__ import annotations

import itertools

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect_ray.context import remote_options

from flows.params import Override, SweepName, run_name, source_of, sweep_config
from flows.runtime import ensure_ray, ray_task_runner
from plop_core.config import SweepConfig
from plop_core.errors import debug_enabled, explain, interruption
from plop_core.preflight import preflight
from plop_core.units import Layout, plan
from plop_core.units.report import units_failed
from plop_core.units.runner import finish_experiment, finish_sweep
from plop_core.units.track import Tracker
from tasks import data, finetune, report, scoring
from tasks.common import outcome


def ray_resources(cfg: SweepConfig) -> dict:
    r = cfg.resources
    opts = {"num_cpus": r.cpus_per_cell, "num_gpus": r.gpus_per_cell}
    if r.memory_gb_per_cell:
        opts["memory"] = int(r.memory_gb_per_cell * 2**30)
    return opts


def sweep_run_name() -> str:
    return run_name(flow_run.parameters)


@flow(name="plop-sweep", flow_run_name=sweep_run_name, log_prints=True, task_runner=ray_task_runner(),
      persist_result=False)
def plop_sweep(config: SweepConfig | None = None, sweep: SweepName | None = None,
               overrides: list[Override] | None = None) -> dict:
    """Score every (model, task) cell of a sweep config; finetune and evaluate arms where it asks to.

    Args:
        config: the whole sweep (sections left out take their defaults); used instead of `sweep` when given
        sweep: a committed sweep config, deploy/sweeps/<sweep>.yaml
        overrides: KEY.SUB=VALUE strings applied to the config, as `plop sweep CONFIG --set KEY.SUB=VALUE`
    """
    tracker, status = None, "FAILED"
    try:
        cfg = sweep_config(config, sweep, overrides)  # ConfigError naming the field
        print(f"sweep {cfg.name!r} from {source_of(config, sweep)}" + (f" with {overrides}" if overrides else ""))
        # every problem at once, in seconds: Ray starts at the first submitted task, no model is loaded yet
        print(preflight(cfg).summary())
        layout = Layout.hive(cfg.outputs.root)
        tracker = Tracker.start(cfg, "plop-sweep")
        # 1. resolve models (no load) and draw each task's sample once
        models = [data.resolve_model(m) for m in cfg.models]
        samples = {t: data.draw_sample(t, cfg.sampling, layout) for t in cfg.tasks}

        # 2. score the cells (and the shards of sharded cells) on Ray actors that keep their model loaded,
        #    spread over every worker; without Ray, one model's cells per process-pool task
        cells = plan.scoring_cells(cfg, models, samples, layout)
        if ensure_ray():  # Ray starts here in a deployment's flow run (after preflight and sampling)
            outcomes, shard_outcomes = scoring.score_on_hosts(cells, ray_resources(cfg),
                                                              keep=cfg.finetune.method == "none")
        else:
            groups = [list(g) for _, g in itertools.groupby(cells, key=lambda c: c.model.name)]
            futures = [scoring.score_model.submit(g[0].model.name, len(g), g) for g in groups]
            done = [o for f in futures for o in f.result()]
            outcomes = [o for o in done if o.unit.kind == "cell"]
            shard_outcomes = [o for o in done if o.unit.kind == "shard"]
        run_ids = {o.unit.key: report.report_cell(tracker, o, layout) for o in outcomes if o.ok}

        # 3. finetune tasks: the base model and every (arm, seed) of each scored cell, all at once on Ray
        cells_ft = [o for o in outcomes if o.ok and plan.finetune_wanted(cfg, o.unit)]
        experiments = [plan.plan_experiment(o.unit, o.result, cfg) for o in cells_ft]
        with remote_options(**ray_resources(cfg)):
            submitted = [(finetune.evaluate_base.submit(e.base), [finetune.train_arm.submit(r) for r in e.runs])
                         for e in experiments]

        # 4. summarize each experiment as its units finish
        results = []
        for o, exp, (base_f, arm_fs) in zip(cells_ft, experiments, submitted):
            base = outcome(exp.base, base_f)
            arms = [outcome(r, f) for r, f in zip(exp.runs, arm_fs)]
            outcomes += [base, *arms]
            res = finish_experiment(exp, base, arms, cfg, o.unit)
            if res is not None:
                results.append(res)
                report.report_experiment(tracker, exp, arms, res, run_ids[o.unit.key])

        # 5. the report: summary markdown and manifest under the root, MLflow parent run (ended FINISHED, or
        #    FAILED when a unit failed), Prefect artifact
        man = finish_sweep(cfg, layout, outcomes + shard_outcomes, run_ids, results, tracker,
                           flow_run_id=str(flow_run.id))
        status = None  # the tracker is ended
        report.report_sweep(cfg.name, man["markdown"])
        print(man["markdown"])
    except Exception as e:  # the error boundary: one line (errors.explain) in the state, MLflow run FAILED
        if (signal := interruption(e)) is not None:  # a Ctrl-C/SIGTERM that surfaced inside C code
            status = "KILLED"
            raise signal from e
        if debug_enabled():
            raise  # PLOP_DEBUG=1: Prefect logs the traceback
        return Failed(message=explain(e), data=e)
    except BaseException:  # Ctrl-C / SIGTERM: Prefect marks the flow run Crashed
        status = "KILLED"
        raise
    finally:
        if tracker is not None and status:
            tracker.end(status, quiet=True)
    failed = units_failed(man)  # failed-with-partial-results: every other unit's results are written
    return Failed(message=str(failed), data=failed) if failed else man
