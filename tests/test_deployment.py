"""A sweep run the way an MLOps team runs a scheduled one: `prefect deployment run` against a server.

A Prefect server (the one `.ci/test` starts, or a local one), a uniquely named process work pool, the
`plop-sweep/score` deployment registered from deploy/prefect.yaml with `prefect deploy` (its pull
step only sets the working directory to $PLOP_REPO, which `prefect deploy` resolves to this checkout's
path: local code, no git clone), a
`prefect worker start --type process` subprocess, and
`prefect deployment run 'plop-sweep/score' --param config=<json> --watch` with a tiny offline
config. The flow run must end Completed on the server, and the cell's Parquet file and MLflow run must
exist under the given results root. These are the commands docs/pipeline.md ("Deployments") lists.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from tests.tiny import save_tiny

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _cli(args, env, timeout=180, cwd=ROOT):
    r = subprocess.run(PREFECT + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"prefect {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@contextlib.contextmanager
def process_worker(pool: str, env: dict, log: Path):
    """`prefect worker start --pool POOL --type process` in a subprocess; stopped with SIGINT (gotcha 12)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(PREFECT + ["worker", "start", "--pool", pool, "--type", "process"],
                                cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _delete_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client

    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        client.delete_work_pool(pool)


def test_score_deployment_runs_on_a_process_worker(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from plop_core import tracking
    from plop_core.config import load_sweep_config

    save_tiny("llama", tmp_path / "tiny-llama", seed=0)
    results = tmp_path / "results"
    config = {
        "name": "deployment-e2e",
        "models": [{"id": str(tmp_path / "tiny-llama"), "name": "tiny-llama"}],
        "tasks": ["arithmetic"],
        "sampling": {"n_samples": 8, "max_length": 32},
        "scorer": {"n_probe": 16, "n_bootstrap": 20, "batch_size": 4},
        "resources": {"use_ray": True, "cpus_per_cell": 1},
        "outputs": {"root": str(results), "experiment": "deployment-e2e"},
    }
    load_sweep_config(config)  # the parameter is exactly a SweepConfig

    pool = f"plop-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PLOP_REPO=str(ROOT),
               PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="2")
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store under the results root
    _cli(["work-pool", "create", "--type", "process", pool], env)
    try:
        _cli(["--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--name", "score",
              "--pool", pool], env)
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name("plop-sweep/score")
        assert dep.work_pool_name == pool and dep.entrypoint == "flows.sweep:plop_sweep"
        # `prefect deploy` resolves {{ $PLOP_REPO }}: the deployment stores this checkout's absolute path
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        worker_env = {k: v for k, v in env.items() if k != "PLOP_REPO"}  # the worker does not need it
        with process_worker(pool, worker_env, worker_dir / "worker.log"):
            r = subprocess.run(PREFECT + ["deployment", "run", "plop-sweep/score", "--param",
                                          f"config={json.dumps(config)}", "--watch", "--watch-timeout", "300"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
        out = r.stdout + r.stderr
        worker_log = (worker_dir / "worker.log").read_text()
        assert r.returncode == 0, f"{out[-4000:]}\n--- worker log ---\n{worker_log[-6000:]}"
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    finally:
        _delete_pool(pool)

    # the server's record of the run: Completed, with our parameters, one Completed task run for the cell
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.state.is_completed(), run.state
    assert run.deployment_id == dep.id and run.parameters["config"]["outputs"]["root"] == str(results)
    states = {t.name: t.state.name for t in tasks}
    assert states.get("score tiny-llama on arithmetic") == "Completed", states

    # the cell's Parquet file and its MLflow runs under the given results root
    (types_file,) = (results / "types" / "model=tiny-llama" / "task=arithmetic").glob("*.parquet")
    types = pd.read_parquet(types_file)
    assert len(types) == 7 and types["nfn"].notna().all()
    cell_dirs = list((results / "cells" / "model=tiny-llama" / "task=arithmetic").iterdir())
    assert len(cell_dirs) == 1 and (cell_dirs[0] / "record.json").exists()
    runs = tracking.find_runs(f"sqlite:///{results}/mlflow.db", "deployment-e2e")
    cells = runs[runs["tags.plop.level"] == "cell"]
    assert len(cells) == 1 and cells["tags.model"].iloc[0] == "tiny-llama"
    assert cells["tags.mlflow.parentRunId"].iloc[0] in set(runs[runs["tags.plop.level"] == "sweep"]["run_id"])
    assert (results / "sweeps" / "deployment-e2e" / "manifest.json").exists()
