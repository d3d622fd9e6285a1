"""Data-parallel scoring on a real two-node Ray cluster (both nodes on 127.0.0.1, `ray.cluster_utils.Cluster`):
a sweep of ONE tiny model on two tasks with `scorer.shards: 2`, joined through RAY_ADDRESS, runs on both
nodes (read back from the provenance columns), keeps the model loaded once per host, shows a Prefect task
run per shard and per cell, and its merged scores equal a serial unsharded run to 1e-6."""

import json

import numpy as np
import pandas as pd
import pytest

from tests.tiny import save_tiny

pytestmark = [pytest.mark.server, pytest.mark.slow]  # ~2 min on the shared 2-core box


@pytest.fixture()
def two_nodes(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_sharded_sweep_of_one_model_uses_both_nodes_and_equals_the_serial_unsharded_run(prefect_api, two_nodes,
                                                                                       tmp_path):
    from flows import run_sweep
    from plop_core.config import load_sweep_config
    from plop_core.units import run_serial
    from tests.test_flows import _task_runs

    save_tiny("llama", tmp_path / "tiny-llama", seed=0)
    rows = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many now?", "answer": str(2 * i + 3)}
            for i in range(40)]
    (tmp_path / "apples.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = {"name": "two-nodes", "models": [{"id": str(tmp_path / "tiny-llama"), "name": "tiny-llama"}],
           "tasks": ["arithmetic", str(tmp_path / "apples.jsonl")], "sampling": {"n_samples": 8, "max_length": 32},
           "scorer": {"n_probe": 16, "n_bootstrap": 50, "batch_size": 2, "shards": 2},
           "outputs": {"root": str(tmp_path / "sharded"), "experiment": "two-nodes"}, "resources": {"cpus_per_cell": 1}}

    man = run_sweep(cfg)
    assert not man["failed"] and len(man["cells"]) == 2 and len(man["shards"]) == 4
    assert man["model_loads"] == 2  # one load per host: each of the two hosts loaded the one model once
    nodes = {n.node_id for n in two_nodes.list_all_nodes()}
    assert len(nodes) == 2
    seq = pd.read_parquet(tmp_path / "sharded" / "sequences")
    assert set(seq["ray_node_id"]) == nodes  # the shards ran on both nodes
    assert seq.groupby(["task", "shard"], observed=True)["sequence_index"].nunique().tolist() == [4, 4, 4, 4]
    assert seq["task_run_id"].nunique() == 4 and (seq["flow_run_id"] == man["flow_run_id"]).all()
    pids = seq.groupby("ray_node_id")["worker_pid"].nunique()
    assert (pids == 1).all()  # one host process per node scored all that node's shards
    types = pd.read_parquet(tmp_path / "sharded" / "types")
    assert set(types["ray_node_id"]) <= nodes and types["task_run_id"].nunique() == 2
    assert _task_runs(man["flow_run_id"], "score tiny-") == {
        **{f"score tiny-llama on {t}": "Completed" for t in ("arithmetic", "apples")},
        **{f"score tiny-llama on {t} shard {i}/2": "Completed" for t in ("arithmetic", "apples") for i in (0, 1)}}

    serial = run_serial(load_sweep_config({**cfg, "scorer": {**cfg["scorer"], "shards": 1},
                                           "outputs": {"root": str(tmp_path / "serial")}}), track=False, progress=False)
    assert not serial["failed"]
    a, b = (pd.read_parquet(tmp_path / r / "types").sort_values(["task", "type"]) for r in ("serial", "sharded"))
    for col in ("nfn", "nfn_ci_low", "nfn_ci_high", "layer_min", "layer_max"):
        np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=1e-6)
    m1, m2 = (pd.read_parquet(tmp_path / r / "modules").sort_values(["task", "module"]) for r in ("serial", "sharded"))
    np.testing.assert_allclose(m2["nfn"].to_numpy(float), m1["nfn"].to_numpy(float), rtol=1e-6)

    again = run_sweep(cfg)  # identical rerun: every cell Cached, no shard rescored, nothing loaded
    assert again["model_loads"] == 0 and all(c["cached"] for c in again["cells"]) and "shards" not in again


def test_sharded_sweep_without_ray_runs_shards_then_the_merge_in_the_process_pool(prefect_api, tmp_path):
    """`resources.use_ray: false` (Prefect's process pool): the same shards and merge, the same numbers."""
    import ray

    from flows import run_sweep
    from plop_core.config import load_sweep_config
    from plop_core.units import run_serial

    if ray.is_initialized():
        ray.shutdown()
    save_tiny("llama", tmp_path / "tiny-llama", seed=0)
    cfg = {"name": "pool", "models": [{"id": str(tmp_path / "tiny-llama"), "name": "tiny-llama"}],
           "tasks": ["arithmetic"], "sampling": {"n_samples": 6, "max_length": 32},
           "scorer": {"n_probe": 16, "n_bootstrap": 20, "batch_size": 2, "shards": 3},
           "outputs": {"root": str(tmp_path / "pool"), "experiment": "pool"}, "resources": {"use_ray": False}}
    man = run_sweep(cfg, num_cpus=1)
    assert not man["failed"] and [s["ok"] for s in man["shards"]] == [True] * 3 and not ray.is_initialized()
    serial = run_serial(load_sweep_config({**cfg, "outputs": {"root": str(tmp_path / "serial")}}), track=False,
                        progress=False)
    assert not serial["failed"] and len(serial["shards"]) == 3
    a, b = (pd.read_parquet(tmp_path / r / "types").sort_values("type") for r in ("serial", "pool"))
    np.testing.assert_allclose(b["nfn"].to_numpy(float), a["nfn"].to_numpy(float), rtol=1e-6)
