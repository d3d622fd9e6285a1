"""An object-store results root (`s3://bucket/prefix`) against a real S3 API: moto's server on 127.0.0.1.

A serial sweep writes its results root to the bucket; pyarrow (and DuckDB, over pyarrow's dataset) read the
Parquet dataset back from the bucket with the same numbers as a local-root run; a rerun with an emptied
staging folder computes nothing (the done-rule reads the store, not the staging copy); a file deleted on
the store makes exactly its unit run again; bad roots and an unreachable bucket are named before any work.
"""

from __future__ import annotations

import json
import logging
import shutil

import pandas as pd
import pytest

from plop_core import storage
from plop_core.config import load_sweep_config
from plop_core.units import Layout, load_done, plan, run_serial, work

BUCKET = "plop-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a free port), the AWS environment pointing at it, one bucket;
    yields pyarrow's S3 filesystem on it."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                     "AWS_ENDPOINT_URL": f"http://{host}:{port}",
                     "PLOP_STAGE_DIR": str(tmp_path_factory.mktemp("stage"))}.items():
            mp.setenv(k, v)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        s3fs = fs.S3FileSystem(endpoint_override=f"http://{host}:{port}", region="us-east-1",
                               allow_bucket_creation=True)
        s3fs.create_dir(BUCKET)
        yield s3fs
    server.stop()


def _cfg(root, data, llama_dir, **over):
    return load_sweep_config({
        "name": "s3", "models": [{"id": str(llama_dir), "name": "tiny"}], "tasks": ["arithmetic", str(data)],
        "sampling": {"n_samples": 8, "max_length": 32}, "scorer": {"n_probe": 16, "n_bootstrap": 10},
        "outputs": {"root": str(root), "experiment": "s3"}, **over})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many now?", "answer": str(2 * i + 3)}
            for i in range(40)]
    path = tmp_path_factory.mktemp("data") / "apples.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _keys(s3fs, prefix: str) -> dict[str, int]:
    from pyarrow import fs

    infos = s3fs.get_file_info(fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
    return {i.path.removeprefix(f"{BUCKET}/{prefix}/"): i.mtime_ns for i in infos if i.type == fs.FileType.File}


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(model=df["model"].astype(str), task=df["task"].astype(str))
    return df.sort_values(["model", "task", "type"]).reset_index(drop=True)


def test_sweep_on_s3_reads_back_like_a_local_one_and_reruns_cached(s3, data, llama_dir, tmp_path):
    import duckdb
    import pyarrow.dataset as ds

    uri = f"s3://{BUCKET}/sweeps/a"
    cfg = _cfg(uri, data, llama_dir)
    work.clear_model_cache()
    man = run_serial(cfg, progress=False)  # with MLflow: SQLite in the staging folder (SQLite cannot live on S3)
    assert not man["failed"] and man["root"] == uri and len(man["cells"]) == 2 and man["model_loads"] == 1
    stage = storage.local_dir(uri)
    assert man["mlflow_uri"] == f"sqlite:///{stage / 'mlflow.db'}"
    keys = _keys(s3, "sweeps/a")
    assert "sweeps/s3/manifest.json" in keys and not any("mlflow" in k or "prefect" in k for k in keys)
    assert not any(".tmp" in k for k in keys)
    for c in man["cells"]:  # every file a record lists, and the record itself, is an object on the store
        record = f"cells/model=tiny/task={c['task_name']}/{c['cell_key']}/record.json"
        assert record in keys and set(c["files"].values()) <= set(keys)

    local = _cfg(tmp_path / "results", data, llama_dir)
    work.clear_model_cache()
    man_local = run_serial(local, track=False, progress=False)
    expected = _sorted(pd.read_parquet(tmp_path / "results" / "types"))

    # pyarrow reads the hive-partitioned dataset straight from the bucket: the same numbers, exactly
    dataset = ds.dataset(f"{BUCKET}/sweeps/a/types", filesystem=s3, format="parquet", partitioning="hive")
    got = _sorted(dataset.to_table().to_pandas())
    cols = ["model", "task", "type", "nfn", "nfn_ci_low", "nfn_ci_high", "cell_key", "sample_hash"]
    pd.testing.assert_frame_equal(got[cols], expected[cols])
    # DuckDB (no httpfs extension offline) queries the same S3 dataset through pyarrow
    nfn = duckdb.sql("select task, type, nfn from dataset order by task, type").df()
    assert list(nfn["nfn"]) == list(expected.sort_values(["task", "type"])["nfn"])
    assert [c["cell_key"] for c in man["cells"]] == [c["cell_key"] for c in man_local["cells"]]

    # the staging folder is a cache: emptied, the rerun still finds every unit done, on the store
    shutil.rmtree(stage)
    work.clear_model_cache()
    again = run_serial(cfg, track=False, progress=False)
    assert not again["failed"] and all(c["cached"] for c in again["cells"]) and again["model_loads"] == 0
    after = _keys(s3, "sweeps/a")
    assert {k: v for k, v in after.items() if "/cells/" in f"/{k}"} == {k: v for k, v in keys.items()
                                                                    if "/cells/" in f"/{k}"}

    # the store is the truth: a Parquet file deleted there (its staging copy intact) reruns its cell only
    victim = next(c for c in again["cells"] if c["task_name"] == "apples")
    staged = Layout.hive(uri).resolve(victim["files"]["types"])  # a reader's fetch: the staging copy is back
    s3.delete_file(f"{BUCKET}/sweeps/a/{victim['files']['types']}")
    assert staged == stage / victim["files"]["types"] and staged.is_file()
    third = run_serial(cfg, track=False, progress=False)
    assert {c["task_name"]: c["cached"] for c in third["cells"]} == {"arithmetic": True, "apples": False}
    assert victim["files"]["types"] in _keys(s3, "sweeps/a") and all(load_done(c) for c in plan.plan_sweep(cfg))


def test_a_record_without_its_files_on_the_store_is_not_done(s3, data, llama_dir):
    """The record is the commit marker: uploaded last, and trusted only with every file it lists."""
    uri = f"s3://{BUCKET}/sweeps/b"
    cfg = _cfg(uri, data, llama_dir, tasks=["arithmetic"])
    work.clear_model_cache()
    man = run_serial(cfg, track=False, progress=False)
    cell = plan.plan_sweep(cfg)[0]
    assert load_done(cell) is not None
    st = storage.Store(uri)
    for rel in man["cells"][0]["files"].values():  # as if the upload stopped before the files: record only
        s3.delete_file(st.key(cell.layout.inside(rel)))
    assert st.exists(cell.record) and load_done(cell) is None


def test_layout_keeps_s3_paths_inside_the_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("PLOP_STAGE_DIR", str(tmp_path))
    lay = Layout.hive("s3://bkt/some/prefix/")
    assert lay.root == "s3://bkt/some/prefix" and lay.remote
    assert lay.inside("types/x.parquet") == tmp_path.resolve() / "s3/bkt/some/prefix/types/x.parquet"
    assert storage.Store(lay.root).key(lay.inside("types/x.parquet")) == "bkt/some/prefix/types/x.parquet"
    for bad in ("../outside.json", "/etc/passwd", "types/../../x", "../prefix2/x"):
        with pytest.raises(ValueError, match="leaves the results root"):
            lay.inside(bad)


@pytest.mark.parametrize("root, says", [("s3://", "names no bucket"), ("s3:///prefix", "names no bucket"),
                                        ("gs://bucket/x", "gs:// is not supported"),
                                        ("s3://bkt/x/../y", "may not contain"), ("s3://B_x/y", "not an S3 bucket name")])
def test_bad_object_store_roots_are_config_errors_naming_the_field(root, says):
    from plop_core.config import ConfigError

    with pytest.raises(ConfigError) as e:
        load_sweep_config({"models": ["m"], "tasks": ["arithmetic"], "outputs": {"root": root}})
    msg = str(e.value)
    assert "outputs.root" in msg and says in msg and "Traceback" not in msg and len(msg.splitlines()) == 2


def test_preflight_names_a_missing_bucket_before_any_work(s3, data, llama_dir):
    from plop_core.preflight import check

    _, problems = check(_cfg(f"s3://{BUCKET}-missing/x", data, llama_dir))
    assert [p.field for p in problems] == ["outputs.root"]
    assert f"cannot write to s3://{BUCKET}-missing/x" in problems[0].message
    assert check(_cfg(f"s3://{BUCKET}/x", data, llama_dir))[1] == []
    assert _keys(s3, "x") == {}  # the probe object is gone


@pytest.mark.server
def test_prefect_flow_on_ray_writes_and_caches_an_s3_root(s3, data, llama_dir, prefect_api, tmp_path):
    """The Prefect flow with its units on local Ray workers (each uploads what it wrote): same dataset on the
    bucket, a rerun's task runs end `Cached`, no Prefect result (pickle) anywhere."""
    from flows import run_sweep
    from flows.runtime import ray_cluster

    uri = f"s3://{BUCKET}/flow"
    cfg = _cfg(uri, data, llama_dir).model_dump(mode="json")
    with ray_cluster(prefect_api, num_cpus=2):
        man = run_sweep(cfg)
        assert not man["failed"] and len(man["cells"]) == 2 and not any(c["cached"] for c in man["cells"])
        again = run_sweep(cfg)
    assert not again["failed"] and all(c["cached"] for c in again["cells"])
    states = {r.split(" on ")[-1]: s for r, s in _task_run_states(again["flow_run_id"]).items() if r.startswith("score")}
    assert states == {"arithmetic": "Cached", "apples": "Cached"}
    keys = _keys(s3, "flow")
    for c in man["cells"]:
        assert set(c["files"].values()) <= set(keys)
    import pyarrow.dataset as ds

    types = ds.dataset(f"{BUCKET}/flow/types", filesystem=s3, partitioning="hive").to_table().to_pandas()
    assert len(types) == 2 * 7 and types["flow_run_id"].eq(man["flow_run_id"]).all()
    stage = storage.local_dir(uri)
    assert not any("prefect" in k for k in keys) and not list(stage.rglob("*prefect*"))


def _task_run_states(flow_run_id) -> dict[str, str]:
    from tests.test_flows import _task_runs

    return _task_runs(flow_run_id, "score ")


def test_finetune_experiment_on_s3_uploads_its_adapter_and_reruns_cached(s3, llama_dir):
    """The finetuning units too: training rows, each arm's PEFT folder, the experiment's tables on the bucket;
    MLflow logs the adapter fetched back from it; a rerun with the staging folder deleted trains nothing."""
    uri = f"s3://{BUCKET}/sweeps/ft"
    cfg = load_sweep_config({
        "name": "ft", "models": [{"id": str(llama_dir), "name": "tiny"}], "tasks": ["arithmetic"],
        "sampling": {"n_samples": 8, "max_length": 48}, "scorer": {"n_bootstrap": 20},
        "finetune": {"method": "sft", "arms": ["plop"], "seeds": [0], "max_steps": 1, "train_samples": 4,
                     "max_length": 48, "batch_size": 4, "lora": {"r": 2}},
        "evaluation": {"n_samples": 3, "metrics": ["nll"]}, "outputs": {"root": uri, "experiment": "ft"}})
    work.clear_model_cache()
    man = run_serial(cfg, progress=False)
    assert not man["failed"] and len(man["experiments"]) == 1
    before = _keys(s3, "sweeps/ft")
    keys = set(before)
    exp = man["experiments"][0]
    assert set(exp["files"].values()) <= keys
    adapter = [k for k in keys if "/runs/plop_seed0/" in k and k.endswith("adapter_model.safetensors")]
    assert len(adapter) == 1 and any(k.endswith("/train_rows.json") for k in keys)
    shutil.rmtree(storage.local_dir(uri))
    again = run_serial(cfg, track=False, progress=False)
    assert not again["failed"] and again["model_loads"] == 0 and again["experiments"] == man["experiments"]
    assert all(c["cached"] for c in again["cells"])
    # the base evaluation's and the arm's records (and adapters) were not written again: nothing was trained
    unit_files = [k for k in keys if k.startswith("finetune/") and ("/runs/" in k or "/base/" in k)]
    assert len(unit_files) >= 4 and {k: _keys(s3, "sweeps/ft")[k] for k in unit_files} == {k: before[k] for k in unit_files}
