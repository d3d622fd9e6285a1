"""Log one finetuning run to MLflow as TRL users expect: the per-step curve as metrics and the adapter as files.

    from plop_core.mlflow_training import log_training_to_mlflow
    log_training_to_mlflow("sqlite:////abs/mlflow.db", run_id, train_result)
    # later, anywhere: mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter")
    #                  PeftModel.from_pretrained(base_model, that_folder)

Why: a user compares arms in the MLflow UI by their loss curves and pulls the winning adapter back
from the run. TRL's own MLflow integration logs every number of each log entry under its own name
(`loss`, `learning_rate`, `grad_norm`, `reward`, `rewards/<func>/mean`, ...) at the trainer's global
step; this logs the same numbers (from `TrainResult.curve()`, so runs trained with report_to="none"
in workers can be logged afterwards, by whoever owns the MLflow run) plus the end-of-training summary,
the curve as `training_curve.json`, and the adapter folder (adapter_model.safetensors +
adapter_config.json) under `adapter/`. It uses an explicit `MlflowClient(uri)`: no global MLflow
state (active run, tracking URI) is read or changed.
"""

from __future__ import annotations

import time
from pathlib import Path

_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def log_training_to_mlflow(uri: str, run_id: str, train_result, *, prefix: str = "", artifact_path: str = "adapter",
                           log_adapter: bool = True) -> dict:
    """Log `train_result` (a `plop_core.train.TrainResult`) into the existing MLflow run `run_id` at `uri`.

    Metrics: every numeric column of `train_result.curve()` except step/epoch-free duplicates, named
    `prefix + TRL's name`, at its step (epoch too, as TRL does); the `train_summary()` values at the
    last step. Artifacts: `training_curve.json` and the adapter folder under `artifact_path`.
    Returns {"n_metrics": ..., "metric_keys": [...], "adapter": artifact path or None}.
    """
    return log_training_record(uri, run_id, train_result.curve(), train_result.train_summary(),
                               train_result.adapter_dir, prefix=prefix, artifact_path=artifact_path,
                               log_adapter=log_adapter)


def log_training_record(uri: str, run_id: str, curve: list[dict], summary: dict, adapter_dir, *, prefix: str = "",
                        artifact_path: str = "adapter", log_adapter: bool = True) -> dict:
    """The same from a run's record (`curve` rows, `train_summary`, adapter folder): what the sweep's
    reporting process has, since the TrainResult stayed in the worker that trained."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    if not curve:
        raise ValueError("the TrainResult has no logged steps (empty log_history); train with logging_steps=1 "
                         "(plop_core.train does) before logging to MLflow")
    adapter = Path(adapter_dir) if adapter_dir else None
    if log_adapter and (adapter is None or not (adapter / "adapter_config.json").is_file()):
        raise FileNotFoundError(f"no saved adapter to log (adapter_dir={adapter_dir!r} has no "
                                "adapter_config.json); pass log_adapter=False to log the curve only")
    client = MlflowClient(tracking_uri=uri)
    client.get_run(run_id)  # fails clearly on an unknown run before anything is logged
    now = int(time.time() * 1000)
    metrics = [Metric(prefix + k, float(v), now, int(row["step"]))
               for row in curve for k, v in row.items() if k != "step" and v is not None]
    last = int(curve[-1]["step"])
    metrics += [Metric(prefix + k, float(v), now, last) for k, v in summary.items() if k not in ("step", "epoch")]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + _BATCH], synchronous=True)
    client.log_dict(run_id, {"columns": list(curve[0]), "rows": curve}, "training_curve.json")
    if log_adapter:
        client.log_artifacts(run_id, str(adapter), artifact_path=artifact_path)
    return {"n_metrics": len(metrics), "metric_keys": sorted({m.key for m in metrics}),
            "adapter": artifact_path if log_adapter else None}
