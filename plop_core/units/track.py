"""MLflow records of a run of units: a parent run per sweep, a nested run per cell, per (arm, seed).

Why in the library: MLflow is where people compare runs, and the serial runner (CLI, notebooks) and the
Prefect flow must log the same runs with the same names, params, metrics and artifacts. Only one process
(the runner's) writes MLflow; workers never need it. Built on `plop_core.tracking` (MlflowClient with
explicit run ids).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from plop_core import driver, storage, tracking
from plop_core.config import SweepConfig
from plop_core.mlflow_training import log_training_record
from plop_core.runtime_info import runtime
from plop_core.units.layout import Layout
from plop_core.units.records import CellResult, Experiment, ExperimentResult, RunResult


def runtime_tags(where: dict) -> dict[str, str]:
    """MLflow tags of where a unit ran: `plop.hostname`, `plop.worker_pid`, `plop.ray_node_id`,
    `plop.flow_run_id`, `plop.task_run_id` and `version.<package>` (empty values left out)."""
    import json

    tags = {f"plop.{k}": str(v) for k, v in where.items() if k != "versions" and v not in (None, "")}
    tags.update({f"version.{k}": v for k, v in json.loads(where.get("versions") or "{}").items() if v})
    return tags


@dataclass
class Tracker:
    uri: str
    experiment_id: str
    parent_run_id: str

    @classmethod
    def start(cls, cfg: SweepConfig, flow: str) -> Tracker:
        """Create the sweep's parent run (whole config as params)."""
        root = storage.local_dir(cfg.outputs.root)  # an s3:// root: its local staging folder (plop_core.storage)
        uri = tracking.resolve_tracking_uri(cfg.outputs.mlflow_uri, root)
        exp_id = tracking.ensure_experiment(uri, cfg.outputs.experiment, root)
        cfg_dict = cfg.model_dump(mode="json")
        killed = end_stale_runs(uri, exp_id, cfg.name)
        me = {f"plop.driver_{k}": v for k, v in driver.identity().items()}
        parent = tracking.start_run(uri, exp_id, cfg.name, params=tracking.flatten(cfg_dict),
                                    tags={"plop.level": "sweep", "plop.flow": flow, "plop.sweep": cfg.name, **me,
                                          **runtime_tags(runtime())})
        if killed:
            tracking.client_for(uri).set_tag(parent, "plop.stale_runs_killed", ",".join(killed)[:5000])
        return cls(uri, exp_id, parent)

    def end(self, status: str = "FINISHED", quiet: bool = False) -> None:
        """End the parent run, and any nested run a failure left open, with `status`. `quiet`: on a failure
        path, an MLflow store that fails too (full disk) must not hide the first error; the run stays
        RUNNING and the next sweep marks it KILLED (its driver is gone by then)."""
        mlflow_log = logging.getLogger("mlflow")
        level = mlflow_log.level
        if quiet:  # MLflow logs its store's failures with a traceback of its own
            mlflow_log.setLevel(logging.CRITICAL + 1)
        try:
            for run_id in _running_descendants(tracking.client_for(self.uri), self.experiment_id,
                                               {self.parent_run_id}):
                tracking.end_run(self.uri, run_id, status)
            tracking.end_run(self.uri, self.parent_run_id, status)
        except Exception:
            if not quiet:
                raise
        finally:
            mlflow_log.setLevel(level)

    def log_cell(self, rec: CellResult, layout: Layout, cached: bool) -> str:
        """A nested run per scoring cell: params, per-type NFN with intervals, tags, files. Returns its id."""
        placement = rec.placement
        run_id = tracking.start_run(
            self.uri, self.experiment_id, f"{rec.model_name} / {rec.task_name}", parent_run_id=self.parent_run_id,
            params={"model_identity": rec.model_identity, "model_id": rec.identity.get("id"),
                    "sample_hash": rec.sample_hash, "config_hash": rec.config_hash, "cell_key": rec.key,
                    "code_version": rec.code_version, "estimator": rec.estimator,
                    **{f"meta.{k}": v for k, v in rec.meta.items()}},
            tags={"plop.level": "cell", "model": rec.model_name, "task": rec.task_name,
                  "placement": ",".join(placement["types"]), "strategy": placement["strategy"],
                  "plop.cached": str(cached).lower(), "plop.cell_key": rec.key, **runtime_tags(rec.runtime)})
        metrics = {f"{col}.{t['type']}": t.get(col) for t in rec.types
                   for col in ("nfn", "nfn_ci_low", "nfn_ci_high", "layer_min", "layer_max", "layer_std")}
        metrics["selection_stability"] = placement.get("stability")
        metrics["score_seconds"] = rec.seconds
        tracking.log_metrics(self.uri, run_id, metrics)
        for name in ("modules", "types", "parts", "placements"):
            if name in rec.files:
                tracking.log_artifact(self.uri, run_id, layout.resolve(rec.files[name]), f"parquet/{name}")
        for name in ("heatmap", "placement", "adapter_config", "targets"):
            if name in rec.files:
                tracking.log_artifact(self.uri, run_id, layout.resolve(rec.files[name]))
        tracking.end_run(self.uri, run_id)
        return run_id

    def log_experiment(self, exp: Experiment, arms: list[RunResult], result: ExperimentResult,
                       cell_run_id: str) -> list[str]:
        """A nested run per (arm, seed) under the cell's run (curve, metrics with intervals) and the
        experiment's chart and tables on the cell's run."""
        metrics = list(exp.runs[0].evaluation.metrics)
        ft = exp.runs[0].finetune.model_dump(mode="json")
        run_ids = []
        for r in arms:
            rid = tracking.start_run(
                self.uri, self.experiment_id, f"{r.arm} seed {r.seed}", parent_run_id=cell_run_id,
                params={"arm": r.arm, "seed": r.seed, "rank": r.rank, "types": r.types,
                        "trainable_params": r.trainable_params, "target_params": r.target_params,
                        "n_modules": r.n_modules, "finetune": ft, "run_key": r.key},
                tags={"plop.level": "arm", "model": exp.model_name, "task": exp.task_name, "arm": r.arm,
                      "placement": r.types, **runtime_tags(r.runtime)})
            vals = {k: r.metrics.get(k) for m in metrics for k in (m, f"{m}_low", f"{m}_high")}
            vals.update({k: r.train.get(k) for k in ("first_loss", "final_loss", "train_s", "tokens_per_s",
                                                      "peak_mem_mb", "mean_reward")})
            vals["eval_s"] = r.eval_s
            tracking.log_metrics(self.uri, rid, vals)
            if r.train.get("curve"):  # per-step loss, learning_rate, grad_norm, ... and the adapter (PEFT folder)
                log_training_record(self.uri, rid, r.train["curve"], r.train.get("train_summary") or {},
                                    exp.layout.resolve(r.train["adapter_dir"]) if r.train.get("adapter_dir") else None,
                                    log_adapter=bool(r.train.get("adapter_dir")))
            tracking.log_json(self.uri, rid, {k: v for k, v in r.row().items() if k != "curve"}, "run.json")
            tracking.end_run(self.uri, rid)
            run_ids.append(rid)
        for name in ("chart", "summary", "evaluation", "training"):
            if name in result.files:
                tracking.log_artifact(self.uri, cell_run_id, exp.layout.resolve(result.files[name]), "experiment")
        return run_ids

    def log_summary(self, path, chart=None) -> None:
        tracking.log_artifact(self.uri, self.parent_run_id, path)
        if chart:
            tracking.log_artifact(self.uri, self.parent_run_id, chart)


def _running_descendants(client, experiment_id: str, parents: set[str]) -> list[str]:
    """RUNNING runs nested (at any depth) under `parents`."""
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    parent_of = {r.info.run_id: r.data.tags.get(tracking.PARENT_TAG) for r in running}
    found, frontier = [], set(parents)
    while frontier:
        frontier = {rid for rid, p in parent_of.items() if p in frontier and rid not in found}
        found += sorted(frontier)
    return found


def end_stale_runs(uri: str, experiment_id: str, sweep: str) -> list[str]:
    """Mark KILLED the RUNNING parent runs of sweep `sweep` whose driver process is gone (kill -9, a crash;
    judged on this host only, see plop_core.driver) and the runs nested under them. Returns their ids."""
    client = tracking.client_for(uri)
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)
    stale = {r.info.run_id for r in running
             if r.data.tags.get("plop.level") == "sweep" and r.data.tags.get("plop.sweep") == sweep
             and driver.is_gone(r.data.tags.get("plop.driver_host"), r.data.tags.get("plop.driver_pid"),
                                r.data.tags.get("plop.driver_started"))}
    killed = sorted(stale) + _running_descendants(client, experiment_id, stale) if stale else []
    for run_id in killed:
        client.set_tag(run_id, "plop.ended_by", "a later sweep: the driver of this run is gone")
        tracking.end_run(uri, run_id, "KILLED")
    return killed
