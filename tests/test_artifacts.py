"""Parquet results (schema, provenance, layout, atomic writes), PNG plots and MLflow helpers."""

import json
import os
import re

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from plop_core import artifacts, plots, tracking


def _prov(model="tiny-llama", task="arith", key="k1", **kw):
    base = dict(sweep="s", cell_key=key, model_name=model, model_id=f"/m/{model}", model_identity="abc",
                task_name=task, sample_hash="h", sample_seed=0, n_samples=8, estimator="probe", scorer_seed=0,
                config_hash="c", code_version="0.1.0+gtest")
    base.update(kw)
    return artifacts.Provenance(**base)


def _modules(n_layers=2, types=("q", "k", "v", "o", "gate", "up", "down")):
    rows = []
    for layer in range(n_layers):
        for i, t in enumerate(types):
            rows.append(dict(module=f"model.layers.{layer}.{t}_proj", layer=layer, type=t, kind="linear",
                             d_in=64, d_out=64, n_tokens=100, feature_norm=1.0 + i, baseline_norm=1.0,
                             baseline_se=0.01, nfn=0.8 + 0.1 * i + 0.01 * layer, nfn_se=np.float64(0.02)))
    return pd.DataFrame(rows)


def test_cell_files_form_a_hive_dataset_readable_without_plop(tmp_path):
    p1 = artifacts.write_cell_table(tmp_path, "modules", _modules(), _prov("m-a", "t1", "k1"))
    p2 = artifacts.write_cell_table(tmp_path, "modules", _modules(3), _prov("m-b", "t2", "k2"))
    assert p1 == tmp_path / "modules" / "model=m-a" / "task=t1" / "k1.parquet"
    assert p2.is_file()
    df = pd.read_parquet(tmp_path / "modules")
    assert len(df) == 14 + 21
    assert set(df["model"].astype(str)) == {"m-a", "m-b"} and set(df["task"].astype(str)) == {"t1", "t2"}
    assert (df["schema_version"] == artifacts.SCHEMA_VERSION).all() and (df["table"] == "modules").all()
    tbl = ds.dataset(tmp_path / "modules", partitioning="hive").to_table()
    assert tbl.schema.field("layer").type == "int64" and tbl.schema.field("created_at").type.tz == "UTC"
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(
        f"select model, type, avg(nfn) as nfn from read_parquet('{tmp_path}/modules/**/*.parquet', "
        "hive_partitioning=true) where model='m-b' group by all order by nfn").df()
    assert list(got["type"]) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert artifacts.read_provenance(p1)["cell_key"] == "k1"
    filtered = artifacts.read_results(tmp_path, "modules", model="m-a", type="v")
    assert len(filtered) == 2


def test_list_columns_and_nullable_values(tmp_path):
    rows = [dict(strategy="plop", k=3, types=("o", "v", "down"), target_modules=["a.o", "a.v", "a.down"],
                 n_modules=3, lora_rank=16, trainable_params=None, stability=float("nan"))]
    p = artifacts.write_cell_table(tmp_path, "placements", rows, _prov())
    back = pq.read_table(p).to_pylist()[0]
    assert back["types"] == ["o", "v", "down"] and back["trainable_params"] is None


def test_schema_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"missing columns \['nfn_se'\]"):
        artifacts.write_cell_table(tmp_path, "modules", _modules().drop(columns="nfn_se"), _prov())
    with pytest.raises(ValueError, match="unknown results table 'bogus'"):
        artifacts.cell_path(tmp_path, "bogus", "m", "t", "k")
    with pytest.raises(ValueError, match="reserved"):
        artifacts.write_cell_table(tmp_path, "types", pd.DataFrame([dict(
            type="q", nfn=1.0, nfn_ci_low=0.9, nfn_ci_high=1.1, layer_min=1, layer_max=1, layer_std=0,
            n_layers=2, model="x")]), _prov())


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "a" / "x.txt"
    artifacts.atomic_write_text(target, "old")

    with pytest.raises(UnicodeEncodeError):  # fails inside the write: a lone surrogate has no UTF-8 form
        artifacts.atomic_write_text(target, "new text \ud800")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["x.txt"]  # no temp file left behind
    p = artifacts.write_parquet_atomic(pd.DataFrame({"a": [1]}), tmp_path / "b.parquet", metadata={"x": 1})
    assert artifacts.read_provenance(p) == {"x": 1}


def test_safe_label_and_code_version(monkeypatch):
    assert artifacts.safe_label("org/Model 1.5B") == "org_Model_1.5B"
    with pytest.raises(ValueError, match="give the model/task a `name`"):
        artifacts.safe_label("///")
    monkeypatch.delenv("PLOP_CODE_VERSION", raising=False)
    source = artifacts.code_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+\+src[0-9a-f]{10}", source), source
    # the override is read on every call: setting it after a first (cached) call still wins, and unsetting
    # it gives the source hash back (the full suite once computed study keys with a stale cached version)
    monkeypatch.setenv("PLOP_CODE_VERSION", "study-1")
    assert artifacts.code_version() == "study-1"
    monkeypatch.delenv("PLOP_CODE_VERSION")
    assert artifacts.code_version() == source


def test_plots_write_pngs(tmp_path):
    p = plots.nfn_heatmap(_modules(4), tmp_path / "h.png", title="tiny")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    layers, types, mat = plots.nfn_matrix(_modules(4))
    assert layers == [0, 1, 2, 3] and types[:3] == ["q", "k", "v"] and mat.shape == (4, 7)
    res = pd.DataFrame(dict(arm=["plop", "plop", "attn"], seed=[0, 1, 0], metric="nll", value=[2.0, 2.2, 2.5],
                            ci_low=[1.9, 2.1, 2.4], ci_high=[2.1, 2.3, 2.6]))
    c = plots.comparison_chart(res, tmp_path / "c.png", metric="nll")
    assert c.stat().st_size > 1000
    with pytest.raises(ValueError, match="layer, type, nfn"):
        plots.nfn_heatmap(pd.DataFrame({"x": [1]}), tmp_path / "bad.png")


def test_tracking_nested_runs_on_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri(None, tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    exp = tracking.ensure_experiment(uri, "exp", tmp_path)
    assert tracking.ensure_experiment(uri, "exp", tmp_path) == exp
    parent = tracking.start_run(uri, exp, "sweep", params={"config": {"a": 1}}, tags={"plop.level": "sweep"})
    child = tracking.start_run(uri, exp, "cell", parent_run_id=parent, tags={"model": "m"})
    tracking.log_metrics(uri, child, {"nfn.q": np.float64(1.5), "skip": float("nan"), "n": np.int64(3)})
    tracking.log_json(uri, child, {"types": ["o"]}, "placement.json")
    tracking.end_run(uri, child)
    tracking.end_run(uri, parent)
    runs = tracking.find_runs(uri, "exp")
    kid = runs[runs["run_id"] == child].iloc[0]
    assert kid["tags.mlflow.parentRunId"] == parent and kid["metrics.nfn.q"] == 1.5 and kid["metrics.n"] == 3
    assert "metrics.skip" not in runs.columns
    art = [f.path for f in tracking.client_for(uri).list_artifacts(child)]
    assert art == ["placement.json"]
    assert json.loads(runs[runs["run_id"] == parent].iloc[0]["params.config"]) == {"a": 1}
    assert os.path.isdir(tmp_path / "mlartifacts")
