"""A tiny SFT run logged to a local SQLite MLflow store: the per-step curve comes back with its steps, and the
adapter pulled back with mlflow.artifacts.download_artifacts loads with PeftModel.from_pretrained and gives
the trained model's logits."""

from __future__ import annotations

import json

import pytest
import torch

from plop_core.config import FinetuneConfig, LoraRecipe
from plop_core.mlflow_training import log_training_to_mlflow
from plop_core.train.sft import train_sft

ROWS = [{"prompt": f"What is {a} + {b}?", "completion": f"The answer is {a + b}."} for a in range(4) for b in range(4)]


@pytest.mark.slow  # ~25 s on 2 shared cores: 4 SFT steps, an MLflow SQLite store created and migrated
def test_curve_and_adapter_round_trip_through_mlflow(llama_dir, tok, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = FinetuneConfig(max_steps=4, batch_size=4, learning_rate=1e-2, max_length=64, lora=LoraRecipe(r=4))
    res = train_sft(llama_dir, None, ROWS, ["q_proj", "v_proj"], recipe, tmp_path / "run", seed=0, keep_model=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("plop-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id

    out = log_training_to_mlflow(uri, run_id, res)
    assert {"loss", "learning_rate", "grad_norm", "epoch", "train_runtime", "train_loss"} <= set(out["metric_keys"])
    curve = res.curve()
    for key in ("loss", "learning_rate", "grad_norm"):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(row["step"], row[key]) for row in curve]
    assert len(curve) == 4

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="adapter", dst_path=str(tmp_path / "dl"),
                                                tracking_uri=uri)
    curve_file = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="training_curve.json",
                                                     dst_path=str(tmp_path / "dl2"), tracking_uri=uri)
    logged_curve = json.loads(open(curve_file).read())
    assert logged_curve["rows"] == curve
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), local).eval()
    ids = tok(["What is 2 + 3? The answer is 5."], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, res.model(**ids).logits, atol=1e-5, rtol=1e-5)


def test_unknown_run_and_missing_adapter_fail_clearly(tmp_path):
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    from plop_core.train.common import TrainResult

    res = TrainResult("sft", 1, 2, 1, [1.0], None, 0.0, 0.0, None,
                      log_history=[{"loss": 1.0, "learning_rate": 0.1, "grad_norm": 0.5, "epoch": 1.0, "step": 1}])
    with pytest.raises(FileNotFoundError, match="no saved adapter to log"):
        log_training_to_mlflow(f"sqlite:///{tmp_path / 'm.db'}", "nope", res)
    empty = SimpleNamespace(curve=lambda: [], train_summary=dict, adapter_dir=None)
    with pytest.raises(ValueError, match="no logged steps"):
        log_training_to_mlflow(f"sqlite:///{tmp_path / 'm.db'}", "nope", empty)
    with pytest.raises(MlflowException):
        log_training_to_mlflow(f"sqlite:///{tmp_path / 'm.db'}", "nope", res, log_adapter=False)
