"""Sweeps run the way an MLOps team runs scheduled ones: `prefect deploy` and `prefect deployment run`
against a server, with the commands docs/deploy.md lists.

A Prefect server (the one `.ci/test` starts, or a local one), a uniquely named process work pool, the
deployments of deploy/prefect.yaml registered with `prefect deploy` (the pull step only sets the working
directory to $PLOP_REPO, which `prefect deploy` resolves to this checkout's path: local code, no git
clone) and a `prefect worker start --type process` subprocess.
- test_runs_by_sweep_name_and_by_partial_config: (a) `--param sweep=NAME --param overrides=[...]` and
  (b) a partial `--param config=...` each end Completed with their Parquet files and MLflow runs; the
  deployment's concurrency limit (ENQUEUE) runs them one after the other.
- test_invalid_parameters_are_refused_at_creation: the server refuses bad parameters naming the field,
  and no flow run exists; the schema it stores is the typed SweepConfig.
- test_schedules_concurrency_and_job_variables_read_back: schedules with their own parameters and the
  next run times the server schedules, the concurrency limits and the job variables.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
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


@contextlib.contextmanager
def deployed(prefect_api: str, *names: str):
    """A fresh process pool with the named deployments of deploy/prefect.yaml (all when none) on it, their
    schedules paused (no nightly sweep of a real model starts on a test worker); yields (env, pool,
    {name: deployment}); deletes the deployments and the pool afterwards."""
    from prefect.client.orchestration import get_client

    pool = f"plop-test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PLOP_REPO=str(ROOT),
               PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="2")
    env.pop("MLFLOW_TRACKING_URI", None)  # the default store under the results root
    _cli(["work-pool", "create", "--type", "process", pool], env)
    deps = {}
    try:
        # one `prefect deploy --name N --pool POOL` each: with several deployments (`--all`) prefect ignores
        # --pool and wants the pool named in prefect.yaml (plop-process) to exist already
        for name in names or ("score", "benchmark"):
            _cli(["--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--name", name, "--pool", pool],
                 env)
        with get_client(sync_client=True) as client:
            for name in names or ("score", "benchmark"):
                deps[name] = dep = client.read_deployment_by_name(f"plop-sweep/{name}")
                if names:
                    for s in dep.schedules:
                        client.update_deployment_schedule(dep.id, s.id, active=False)
        yield env, pool, deps
    finally:
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            for dep in deps.values():
                client.delete_deployment(dep.id)
        _delete_pool(pool)


def _runs_of(deployment_id, manual_only=True):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))
    return [r for r in runs if not (manual_only and r.auto_scheduled)]




def _create_run(args: list[str], env: dict) -> tuple[int, str]:
    """`prefect deployment run plop-sweep/score ARGS` (no --watch): (exit code, output on one line per message)."""
    r = subprocess.run(PREFECT + ["deployment", "run", *args], cwd=ROOT, env=dict(env, COLUMNS="1000"),
                       capture_output=True, text=True, timeout=180)
    return r.returncode, r.stdout + r.stderr


def _wait_final(run_ids, worker_log: Path, timeout: float = 900):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in run_ids]
            if all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                raise AssertionError(f"runs not final after {timeout} s: {[r.state for r in runs]}\n"
                                     f"--- worker log ---\n{worker_log.read_text()[-6000:]}")
            time.sleep(2)


def _task_states(run) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    return {t.name: t.state.name for t in tasks}


def _check_results(root: Path, experiment: str, sweep: str) -> dict:
    from plop_core import tracking

    (types_file,) = (root / "types" / "model=tiny-llama" / "task=arithmetic").glob("*.parquet")
    types = pd.read_parquet(types_file)
    assert len(types) == 7 and types["nfn"].notna().all()
    cell_dirs = list((root / "cells" / "model=tiny-llama" / "task=arithmetic").iterdir())
    assert len(cell_dirs) == 1 and (cell_dirs[0] / "record.json").exists()
    runs = tracking.find_runs(f"sqlite:///{root}/mlflow.db", experiment)
    cells = runs[runs["tags.plop.level"] == "cell"]
    assert len(cells) == 1 and cells["tags.model"].iloc[0] == "tiny-llama"
    assert cells["tags.mlflow.parentRunId"].iloc[0] in set(runs[runs["tags.plop.level"] == "sweep"]["run_id"])
    return json.loads((root / "sweeps" / sweep / "manifest.json").read_text())


def test_runs_by_sweep_name_and_by_partial_config(prefect_api, tmp_path):
    save_tiny("llama", tmp_path / "tiny-llama", seed=0)
    tiny, a, b = tmp_path / "tiny-llama", tmp_path / "results-a", tmp_path / "results-b"
    # (a) a committed sweep by name, shrunk and pointed at the tiny model with `plop sweep --set` strings
    overrides = [f"models=[{{id: {tiny}, name: tiny-llama}}]", "tasks=[arithmetic]", "sampling.n_samples=8",
                 "sampling.max_length=32", "scorer.n_probe=16", "scorer.n_bootstrap=20", "scorer.batch_size=4",
                 f"outputs.root={a}", "outputs.experiment=by-name"]
    # (b) a partial config: no name, selection, finetune, evaluation or resources (their defaults apply)
    partial = {"models": [{"id": str(tiny), "name": "tiny-llama"}], "tasks": ["arithmetic"],
               "sampling": {"n_samples": 8, "max_length": 32},
               "scorer": {"n_probe": 16, "n_bootstrap": 20, "batch_size": 4},
               "outputs": {"root": str(b), "experiment": "partial"}}

    with deployed(prefect_api, "score") as (env, pool, deps):
        dep = deps["score"]
        assert dep.work_pool_name == pool and dep.entrypoint == "flows.sweep:plop_sweep"
        assert dep.parameters == {"sweep": "score-smollm2"} and dep.enforce_parameter_schema
        # `prefect deploy` resolves {{ $PLOP_REPO }}: the deployment stores this checkout's absolute path
        assert dep.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]

        worker_dir = tmp_path / "worker"
        worker_dir.mkdir()
        worker_env = {k: v for k, v in env.items() if k != "PLOP_REPO"}  # the worker does not need it
        ids = {}
        with process_worker(pool, worker_env, worker_dir / "worker.log"):
            for key, args in {"a": ["--param", "sweep=score-smollm2", "--param", f"overrides={json.dumps(overrides)}"],
                              "b": ["--param", f"config={json.dumps(partial)}"]}.items():
                rc, out = _create_run(["plop-sweep/score", *args], env)
                assert rc == 0, out
                ids[key] = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
            run_a, run_b = _wait_final([ids["a"], ids["b"]], worker_dir / "worker.log")

    log = (worker_dir / "worker.log").read_text()
    for run in (run_a, run_b):
        assert run.state.is_completed(), f"{run.state}\n--- worker log ---\n{log[-6000:]}"
        assert run.deployment_id == dep.id
        states = _task_states(run)
        assert states.get("score tiny-llama on arithmetic") == "Completed", states
        # Ray started before scoring (flows.runtime.ensure_ray): cells ran on model hosts, not in one
        # `score-model` task per model (that fallback is for resources.use_ray: false)
        assert not [n for n in states if n.startswith("model ")], states

    # (a): the server kept the parameters as given; the run is named after the YAML's sweep
    assert run_a.parameters == {"sweep": "score-smollm2", "overrides": overrides}
    assert run_a.name == "sweep-score-smollm2"
    man_a = _check_results(a, "by-name", "score-smollm2")
    assert man_a["config"]["sampling"] == {**man_a["config"]["sampling"], "n_samples": 8, "source": "offline"}

    # (b): the deployment's default `sweep` stays in the parameters, but the given config is the sweep
    assert run_b.parameters == {"sweep": "score-smollm2", "config": partial}
    assert run_b.name == "sweep-sweep"  # SweepConfig's default name
    man_b = _check_results(b, "partial", "sweep")
    assert man_b["config"]["selection"] == {"strategy": "plop", "k": 3, "seed": 0}
    assert man_b["config"]["finetune"]["method"] == "none" and man_b["config"]["sampling"]["source"] == "auto"
    assert "sweep 'sweep' from the `config` parameter (the `sweep` 'score-smollm2' is not used)" in log

    # concurrency_limit 1, ENQUEUE: the second run waited for the first to finish
    first, second = sorted((run_a, run_b), key=lambda r: r.start_time)
    assert first.end_time <= second.start_time, (first.end_time, second.start_time)


@pytest.fixture(scope="module")
def all_deployed(prefect_api):
    with deployed(prefect_api) as d:
        yield d


BAD_PARAMETERS = [  # (--param, what the server says)
    ('config={"tasks": ["arithmetic"]}',  # the crash of issue 9 (KeyError 'name', then models only after Ray)
     "Validation failed for field 'config'. Failure reason: 'models' is a required property"),
    ('config={"models": ["m"], "tasks": ["arithmetic"], "sampling": {"n_samples": 0}}',
     "Validation failed for field 'config.sampling.n_samples'. Failure reason: 0 is less than the minimum of 1"),
    ('config={"models": ["m"], "tasks": ["arithmetic"], "samplin": {"n_samples": 8}}',
     "Validation failed for field 'config'. Failure reason: Additional properties are not allowed "
     "('samplin' was unexpected)"),
    ('config={"models": [{"name": "m"}], "tasks": ["arithmetic"]}', "Validation failed for field 'config.models[0]'"),
    ("sweep=../prefect", "Validation failed for field 'sweep'. Failure reason: '../prefect' is not one of"),
    ('overrides=["sampling.n_samples"]', "Validation failed for field 'overrides[0]'. Failure reason: "
     "'sampling.n_samples' does not match"),
]


def test_invalid_parameters_are_refused_at_creation(all_deployed):
    from plop_core.config import sweep_names

    env, _, deps = all_deployed
    dep = deps["score"]
    schema = dep.parameter_openapi_schema  # what the server enforces: the typed SweepConfig, not `object`
    assert schema["definitions"]["SweepConfig"]["required"] == ["models", "tasks"]
    assert schema["properties"]["sweep"]["anyOf"][0]["enum"] == sweep_names(ROOT / "deploy" / "sweeps")
    assert all(d.enforce_parameter_schema for d in deps.values())
    before = {r.id for r in _runs_of(dep.id)}
    for param, message in BAD_PARAMETERS:
        rc, out = _create_run(["plop-sweep/score", "--param", param], env)
        assert rc == 1 and f"Error creating flow run: {message}" in out, out
    assert {r.id for r in _runs_of(dep.id)} == before  # no run was created, so nothing can start


def test_schedules_concurrency_and_job_variables_read_back(all_deployed, prefect_api):
    import httpx
    from prefect.client.orchestration import get_client

    _, _, deps = all_deployed
    expected = {  # deploy/prefect.yaml
        "score": ("nightly-smollm2", "30 2 * * *", "ENQUEUE",
                  {"sweep": "score-smollm2", "overrides": ["outputs.experiment=plop-nightly"]}),
        "benchmark": ("weekly-gemma3", "0 4 * * 0", "CANCEL_NEW",
                      {"sweep": "benchmark-gemma3", "overrides": ["finetune.seeds=[0, 1, 2]"]}),
    }
    now = dt.datetime.now(dt.UTC)
    for name, (slug, cron, strategy, params) in expected.items():
        dep = deps[name]
        with get_client(sync_client=True) as client:
            (sched,) = client.read_deployment_schedules(dep.id)
        assert (sched.slug, sched.active, sched.parameters) == (slug, True, params)
        assert (sched.schedule.cron, sched.schedule.timezone) == (cron, "UTC")
        gcl = dep.global_concurrency_limit
        assert (gcl.limit, gcl.active, dep.concurrency_options.collision_strategy.value) == (1, True, strategy)
        env = dep.job_variables["env"]
        assert {k: env[k] for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PLOP_HOME", "AWS_ENDPOINT_URL")} == \
            dict.fromkeys(("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PLOP_HOME", "AWS_ENDPOINT_URL"))
        assert env["HF_HUB_OFFLINE"] == "1"

        # the next runs, as the server's scheduler makes them: the schedule's parameters and its times
        r = httpx.post(f"{prefect_api}/deployments/{dep.id}/schedule", json={"min_runs": 3, "max_runs": 3})
        assert r.status_code < 300, r.text
        runs = sorted((x for x in _runs_of(dep.id, manual_only=False) if x.auto_scheduled),
                      key=lambda x: x.expected_start_time)[:3]
        times = [x.expected_start_time.astimezone(dt.UTC) for x in runs]
        assert all(x.state.name == "Scheduled" and x.parameters == params for x in runs)
        step = dt.timedelta(days=1 if name == "score" else 7)
        assert now < times[0] <= now + step and [t2 - t1 for t1, t2 in zip(times, times[1:])] == [step, step]
        if name == "score":
            assert all((t.hour, t.minute) == (2, 30) for t in times)
        else:
            assert all((t.weekday(), t.hour, t.minute) == (6, 4, 0) for t in times)  # Sunday 04:00
