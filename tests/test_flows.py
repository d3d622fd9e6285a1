"""End to end through real Prefect (a server), real Ray (local, 2 CPUs), MLflow on SQLite and Parquet.

Scoring sweep of two tiny models x two tasks (the generated `arithmetic` task and a local JSONL file):
files with the documented schema, nested MLflow runs with artifacts, one Prefect task run per cell;
then caching: an identical rerun scores nothing (task runs end `Cached`), a changed n_samples rescores,
and a cell whose files were deleted is the only one recomputed (resume).
"""

import json
import os

import pandas as pd
import pytest

from plop_core import artifacts, tracking
from plop_core.units import Layout
from tests.tiny import save_tiny

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def ray_local(prefect_api):
    from flows.runtime import ray_cluster

    with ray_cluster(prefect_api, num_cpus=2):
        yield


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    save_tiny("llama", d / "tiny-llama", seed=0)
    save_tiny("qwen2", d / "tiny-qwen", seed=1)
    rows = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many now?", "answer": str(2 * i + 3)}
            for i in range(40)]
    (d / "apples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return {
        "name": "tiny-e2e",
        "models": [{"id": str(d / "tiny-llama"), "name": "tiny-llama"}, {"id": str(d / "tiny-qwen"), "name": "tiny-qwen"}],
        "tasks": ["arithmetic", str(d / "apples.jsonl")],
        "sampling": {"n_samples": 8, "max_length": 32},
        "scorer": {"n_probe": 16, "n_bootstrap": 20, "batch_size": 4},
        "outputs": {"root": str(d / "results"), "experiment": "tiny-e2e"},
        "resources": {"cpus_per_cell": 1},
    }


def _task_runs(flow_run_id, name):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                     task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name)))
    return {r.name: r.state.name for r in runs}


def _artifacts(flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a.type for a in arts}


def test_scoring_sweep_end_to_end_then_cache_and_resume(prefect_api, ray_local, sweep_config):
    from flows import run_sweep

    root = sweep_config["outputs"]["root"]
    man = run_sweep(sweep_config)
    assert man["prefect_api_url"] == prefect_api and not man["failed"]
    assert len(man["cells"]) == 4 and 2 <= man["model_loads"] <= 4
    # the cells ran on Ray actors holding their model: each host process loaded each model at most once
    recs = [json.loads(p.read_text()) for p in Layout.hive(root).base.glob("cells/*/*/*/record.json")]
    loads = [(r["runtime"]["worker_pid"], r["model_name"]) for r in recs if r["model_loaded"]]
    assert len(loads) == man["model_loads"] == len(set(loads))

    # Parquet: a hive dataset by model and task with the documented columns and provenance
    modules = pd.read_parquet(f"{root}/modules")
    assert set(zip(modules["model"].astype(str), modules["task"].astype(str))) == {
        (m, t) for m in ("tiny-llama", "tiny-qwen") for t in ("arithmetic", "apples")}
    for table in ("modules", "types", "placements"):
        df = pd.read_parquet(f"{root}/{table}")
        assert set(artifacts.TABLES[table].names) <= set(df.columns)
        assert set(artifacts.PROVENANCE_SCHEMA.names) <= set(df.columns)
        assert (df["schema_version"] == artifacts.SCHEMA_VERSION).all()
    types = pd.read_parquet(f"{root}/types")
    assert len(types) == 4 * 7 and types["sample_hash"].nunique() == 2 and types["model_identity"].nunique() == 2
    # where and with what: the Ray node, the worker process, this flow run, a task run per cell, the versions
    import ray

    assert set(types["ray_node_id"]) == {n["NodeID"] for n in ray.nodes()}
    assert (types["flow_run_id"] == man["flow_run_id"]).all() and types["task_run_id"].nunique() == 4
    assert types["worker_pid"].ne(os.getpid()).all() and types["hostname"].notna().all()
    assert json.loads(types["versions"].iloc[0])["torch"].startswith("2.13")
    samples = pd.read_parquet(f"{root}/samples")
    assert (samples["flow_run_id"] == man["flow_run_id"]).all() and samples["task_run_id"].nunique() == 2

    # MLflow: parent run per sweep, a nested run per cell with tags, metrics and artifacts
    uri = man["mlflow_uri"]
    runs = tracking.find_runs(uri, "tiny-e2e")
    parent = runs[runs["tags.plop.level"] == "sweep"]
    cells = runs[runs["tags.plop.level"] == "cell"]
    assert len(parent) == 1 and len(cells) == 4
    assert (cells["tags.mlflow.parentRunId"] == parent["run_id"].iloc[0]).all()
    assert set(cells["tags.task"]) == {"arithmetic", "apples"} and cells["tags.placement"].str.count(",").eq(2).all()
    assert cells["metrics.nfn.q"].notna().all() and cells["metrics.nfn_ci_low.down"].notna().all()
    assert (cells["tags.plop.flow_run_id"] == man["flow_run_id"]).all() and cells["tags.plop.ray_node_id"].notna().all()
    assert cells["tags.version.transformers"].notna().all() and parent["tags.plop.hostname"].notna().all()
    client = tracking.client_for(uri)
    names = {a.path for a in client.list_artifacts(cells["run_id"].iloc[0])}
    assert {"nfn_heatmap.png", "placement.json", "adapter_config.json", "targets.md", "parquet"} <= names

    # Prefect: one task run per cell, read back from the server
    first = _task_runs(man["flow_run_id"], "score tiny-")
    assert first == {f"score {m} on {t}": "Completed" for m in ("tiny-llama", "tiny-qwen") for t in ("arithmetic", "apples")}

    # Prefect artifacts: a table per cell (per-type NFN and placement), a markdown summary per sweep
    want = {f"nfn-{m}-{t}": "table" for m in ("tiny-llama", "tiny-qwen") for t in ("arithmetic", "apples")}
    want["sweep-tiny-e2e"] = "markdown"
    assert _artifacts(man["flow_run_id"]).items() >= want.items()

    # identical rerun: nothing is scored
    again = run_sweep(sweep_config)
    assert set(_task_runs(again["flow_run_id"], "score tiny-").values()) == {"Cached"}
    assert again["model_loads"] == 0 and all(c["cached"] for c in again["cells"])

    # a cell whose Parquet file was deleted is the only one recomputed (the done-rule checks its files)
    victim = next(c for c in man["cells"] if c["model_name"] == "tiny-qwen" and c["task_name"] == "apples")
    os.remove(Layout.hive(root).resolve(victim["files"]["types"]))
    resumed = run_sweep(sweep_config)
    states = _task_runs(resumed["flow_run_id"], "score tiny-")
    assert states.pop("score tiny-qwen on apples") == "Completed" and set(states.values()) == {"Cached"}

    # changing n_samples rescores every cell (new sample hashes, new keys)
    changed = run_sweep(sweep_config, overrides=["sampling.n_samples=6"])
    assert set(_task_runs(changed["flow_run_id"], "score tiny-").values()) == {"Completed"}
    assert {c["cell_key"] for c in changed["cells"]}.isdisjoint({c["cell_key"] for c in man["cells"]})


@pytest.mark.slow
def test_benchmark_sweep_finetunes_arms_per_cell(prefect_api, ray_local, sweep_config):
    from flows import run_sweep

    cfg = dict(sweep_config, name="tiny-bench", models=sweep_config["models"][:1], tasks=["arithmetic"],
               finetune={"method": "sft", "arms": ["plop", "attn"], "seeds": [0], "lora": {"r": 2},
                         "train_samples": 8, "max_steps": 2, "batch_size": 4, "max_length": 48},
               evaluation={"metrics": ["nll"], "n_samples": 8, "n_bootstrap": 50},
               outputs={"root": sweep_config["outputs"]["root"] + "-bench", "experiment": "tiny-bench"})
    man = run_sweep(cfg)
    (exp,) = man["experiments"]
    assert {s["arm"] for s in exp["summary"]} == {"base", "plop", "attn"}
    ev = pd.read_parquet(f"{cfg['outputs']['root']}/evaluation")
    assert set(ev["arm"]) == {"base", "plop", "attn"} and ev["value"].notna().all() and (ev["metric"] == "nll").all()
    ev = ev.set_index("arm")
    # matched budget: attn's rank is the one whose count is closest to plop's (within half a rank step)
    assert ev.loc["plop", "trainable_params"] == exp["reference_params"]
    per_rank = ev.loc["attn", "trainable_params"] / ev.loc["attn", "lora_rank"]
    assert abs(ev.loc["attn", "trainable_params"] - exp["reference_params"]) <= per_rank / 2
    runs = tracking.find_runs(man["mlflow_uri"], "tiny-bench")
    cell = runs[runs["tags.plop.level"] == "cell"]["run_id"].iloc[0]
    arms = runs[runs["tags.plop.level"] == "arm"]
    assert len(arms) == 2 and (arms["tags.mlflow.parentRunId"] == cell).all() and arms["metrics.nll"].notna().all()
    # the training table: one row per logged optimizer step; each arm's MLflow run has the same curve and
    # the adapter, which PEFT loads back from MLflow
    train = pd.read_parquet(f"{cfg['outputs']['root']}/training")
    assert sorted(train.groupby("arm")["step"].apply(list).to_dict().items()) == [("attn", [1, 2]), ("plop", [1, 2])]
    client = tracking.client_for(man["mlflow_uri"])
    for _, run in arms.iterrows():
        hist = [(m.step, m.value) for m in client.get_metric_history(run["run_id"], "loss")]
        rows = train[train["arm"] == run["tags.arm"]].sort_values("step")
        assert hist == list(zip(rows["step"], rows["loss"]))
    import mlflow
    from peft import PeftConfig

    adapter = mlflow.artifacts.download_artifacts(run_id=arms["run_id"].iloc[0], artifact_path="adapter",
                                                  tracking_uri=man["mlflow_uri"])
    assert PeftConfig.from_pretrained(adapter).r == int(ev.loc[arms["tags.arm"].iloc[0], "lora_rank"])
    states = _task_runs(man["flow_run_id"], "finetune ")
    assert set(states.values()) == {"Completed"} and len(states) == 2


def test_prefect_yaml_deployments_register_with_sweep_parameters(prefect_api):
    import subprocess
    import sys
    from pathlib import Path

    from prefect.client.orchestration import get_client

    from flows.params import sweep_config

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PLOP_REPO=str(root))
    prefect = [sys.executable, "-m", "prefect"]
    subprocess.run(prefect + ["work-pool", "create", "--type", "process", "plop-process", "--overwrite"],
                   env=env, check=True, capture_output=True)
    r = subprocess.run(prefect + ["--no-prompt", "deploy", "--prefect-file", "deploy/prefect.yaml", "--all"],
                       cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with get_client(sync_client=True) as client:
        for name, sweep, model in (("plop-sweep/score", "score-smollm2", "smollm2-135m-instruct"),
                                   ("plop-sweep/benchmark", "benchmark-gemma3", "gemma3-270m")):
            dep = client.read_deployment_by_name(name)
            assert dep.work_pool_name == "plop-process" and dep.parameters == {"sweep": sweep}
            cfg = sweep_config(None, **dep.parameters)  # a committed sweep YAML, resolved as the flow does
            assert cfg.name == sweep and cfg.models[0].id == model
            client.delete_deployment(dep.id)  # no nightly runs scheduled on the test server


def test_local_ray_listens_on_loopback_only(ray_local):
    """Servers bind 127.0.0.1 by default: the local Ray node (GCS, raylet) included."""
    import ray

    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
