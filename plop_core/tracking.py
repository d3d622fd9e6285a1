"""MLflow tracking for sweeps: one parent run per sweep, nested runs per cell and per (arm, seed).

Why: MLflow is where people compare runs. Everything goes through `MlflowClient` with explicit run
ids (no global "active run"), so the same helpers work from the flow process, a worker, or a test,
and nested runs are linked with the standard `mlflow.parentRunId` tag the UI understands.
Default store: a SQLite file under the results root (`sqlite:////abs/root/mlflow.db`) with artifacts
in `<root>/mlartifacts`; any `MLFLOW_TRACKING_URI` (e.g. an `http://` server) works instead. With an
object-store root (`s3://...`) the `root` here is its local staging folder (plop_core.storage): SQLite
cannot live on S3, so the store and MLflow's artifact copies stay on the machine that runs the sweep.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any

PARENT_TAG = "mlflow.parentRunId"


def resolve_tracking_uri(explicit: str | None, root: str | Path) -> str:
    """explicit URI > $MLFLOW_TRACKING_URI > `sqlite:////<abs root>/mlflow.db`."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def client_for(uri: str):
    import logging

    from mlflow.tracking import MlflowClient

    from plop_core.errors import debug_enabled

    if not debug_enabled():
        # MLflow's SQL store logs every database error with a traceback before raising it; the error still
        # reaches the caller (the CLI's boundary explains it in one line, e.g. a full disk), so not twice
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str, root: str | Path) -> str:
    """Experiment id of `name`, created (artifacts under `<root>/mlartifacts` for a local store) if absent."""
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        location = (Path(root).resolve() / "mlartifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _clean_params(params: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in params.items():
        text = v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True)
        out[k] = text[:6000]
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def start_run(uri: str, experiment_id: str, name: str, parent_run_id: str | None = None,
              params: dict[str, Any] | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run (nested under `parent_run_id` if given), log params and tags; returns its id."""
    from mlflow.entities import Param

    client = client_for(uri)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client.create_run(experiment_id, run_name=name, tags={k: str(v) for k, v in all_tags.items()})
    if params:
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _clean_params(params).items()])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log finite numeric metrics (NaN/None skipped) at one step."""
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step) for k, v in metrics.items()
             if isinstance(v, numbers.Real) and math.isfinite(float(v))]
    if items:
        client_for(uri).log_batch(run_id, metrics=items)


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    client_for(uri).log_artifact(run_id, str(path), artifact_path)


def log_json(uri: str, run_id: str, obj: Any, name: str) -> None:
    """Log a JSON document as an artifact file `name` (e.g. placement.json)."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
        client_for(uri).log_artifact(run_id, str(p))


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED / FAILED / KILLED."""
    client_for(uri).set_terminated(run_id, status)


def find_runs(uri: str, experiment: str, filter_string: str = ""):
    """mlflow.search_runs over one experiment (pandas), for reports and tests."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string)


def ui_command(uri: str) -> str:
    """The command a user runs to look at the runs in the MLflow UI."""
    if uri.startswith("http"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --port 5000"
