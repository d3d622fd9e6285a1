"""The embedded default, as a user meets it: `plop sweep CONFIG` in a fresh process with no
PREFECT_API_URL, no RAY_ADDRESS, no MLFLOW_TRACKING_URI. The sweep must start its own local Prefect
server and Ray, finish with exit code 0 (the server is stopped cleanly after logs are drained), print
the summary, and leave Parquet + MLflow (SQLite) under the results root.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.tiny import save_tiny

pytestmark = pytest.mark.slow


def test_plop_sweep_embedded_default(tmp_path):
    save_tiny("llama", tmp_path / "tiny-llama", seed=0)
    cfg = {
        "name": "embedded",
        "models": [{"id": str(tmp_path / "tiny-llama"), "name": "tiny-llama"}],
        "tasks": ["arithmetic"],
        "sampling": {"n_samples": 8, "max_length": 32},
        "scorer": {"n_probe": 16, "n_bootstrap": 20, "batch_size": 4},
        "outputs": {"root": str(tmp_path / "results")},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "sweep", str(tmp_path / "sweep.yaml"),
                           "--num-cpus", "2"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the summary's NFN row of the cell: seven per-type values, and the placement is the three lowest
    nfn_table = proc.stdout.split("## NFN per module type")[1].split("## Cells")[0]
    rows = {line for line in nfn_table.splitlines() if line.startswith("| tiny-llama | arithmetic |")}
    assert len(rows) == 1, rows  # printed by `plop sweep`, and by the flow into its log: the same row
    (row,) = rows
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| model | task |"))
    cols, vals = header.strip("| ").split(" | "), row.strip("| ").split(" | ")
    nfn = {c: float(v) for c, v in zip(cols[2:-1], vals[2:-1])}
    assert len(nfn) == 7 and sorted(vals[-1].split(",")) == sorted(sorted(nfn, key=nfn.get)[:3])
    root = tmp_path / "results"
    assert list((root / "types" / "model=tiny-llama" / "task=arithmetic").glob("*.parquet"))
    assert (root / "mlflow.db").is_file()
    manifest = json.loads(next((root / "sweeps").rglob("manifest.json")).read_text())
    assert manifest["model_loads"] == 1
