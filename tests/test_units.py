"""The units layer without an orchestrator: keys, planning, the writer's two layouts, the done-rule,
resume (only the damaged cell is recomputed), and the serial runner's experiment agreeing with
`plop compare` (same arms, same random draws per seed, same files)."""

import json
import os

import pandas as pd
import pytest

from plop_core import artifacts
from plop_core.config import load_sweep_config, task_label
from plop_core.placement import Placement
from plop_core.units import Layout, ModelRef, SampleRef, load_done, plan, run_serial, work


def _cfg(root, **over):
    base = {"name": "t", "models": [{"id": "m", "name": "m"}], "tasks": ["arithmetic", "data/my file.jsonl"],
            "sampling": {"n_samples": 8, "max_length": 32}, "scorer": {"n_probe": 16, "n_bootstrap": 10},
            "outputs": {"root": str(root)}}
    base.update(over)
    return load_sweep_config(base)


def _model(name="m", key="abc"):
    return ModelRef(spec={"id": name, "name": name}, name=name, identity={"id": name}, identity_key=key)


def _sample(task="arithmetic", h="s1"):
    return SampleRef(task=task, task_name=task_label(task), sample_hash=h, path="x.parquet", n_rows=8,
                     sampling={"n_samples": 8})


def test_cell_key_changes_with_everything_that_determines_the_scores(tmp_path, monkeypatch):
    monkeypatch.setenv("PLOP_CODE_VERSION", "v1")
    cfg = _cfg(tmp_path)
    key = plan.cell_key(_model(), _sample(), cfg)
    assert key == plan.cell_key(_model(), _sample(), _cfg(tmp_path))
    others = {
        plan.cell_key(_model(key="abd"), _sample(), cfg),
        plan.cell_key(_model(name="m2"), _sample(), cfg),  # same weights, another name: another cell
        plan.cell_key(_model(), _sample(h="s9"), cfg),
        plan.cell_key(_model(), _sample(), _cfg(tmp_path, scorer={"n_probe": 32})),
        plan.cell_key(_model(), _sample(), _cfg(tmp_path, sampling={"max_length": 64})),
        plan.cell_key(_model(), _sample(), _cfg(tmp_path, selection={"k": 2})),
        plan.cell_key(_model(), _sample(), _cfg(tmp_path, finetune={"method": "sft", "arms": ["plop", "random"]})),
    }
    # the results root and the sweep name do not change what is computed
    assert plan.cell_key(_model(), _sample(), _cfg(tmp_path / "x", name="other")) == key
    # seeds matter only when the random arm (drawn per seed) is an arm
    ft = {"method": "sft", "arms": ["plop", "attn"]}
    assert plan.cell_key(_model(), _sample(), _cfg(tmp_path, finetune={**ft, "seeds": [0]})) == \
        plan.cell_key(_model(), _sample(), _cfg(tmp_path, finetune={**ft, "seeds": [0, 1]}))
    monkeypatch.setenv("PLOP_CODE_VERSION", "v2")
    others.add(plan.cell_key(_model(), _sample(), cfg))
    assert key not in others and len(others) == 8


def test_cells_are_grouped_by_model_and_carry_their_task_and_model(tmp_path):
    cfg = _cfg(tmp_path, models=[{"id": "a"}, {"id": "b"}])
    samples = {"arithmetic": _sample(), "data/my file.jsonl": _sample("data/my file.jsonl", "s2")}
    cells = plan.scoring_cells(cfg, [_model("a", "ka"), _model("b", "kb")], samples, Layout.hive(tmp_path))
    assert [(c.model_name, c.task_name, c.sample.task) for c in cells] == [
        ("a", "arithmetic", "arithmetic"), ("a", "my_file", "data/my file.jsonl"),
        ("b", "arithmetic", "arithmetic"), ("b", "my_file", "data/my file.jsonl")]
    assert len({c.key for c in cells}) == 4
    assert cells[1].dir == tmp_path.resolve() / "cells" / "model=a" / "task=my_file" / cells[1].key


def test_layout_refuses_paths_outside_the_root(tmp_path):
    lay = Layout.hive(tmp_path / "root")
    assert lay.resolve("types/x.parquet") == tmp_path.resolve() / "root" / "types" / "x.parquet"
    for bad in ("../outside.json", "/etc/passwd", "types/../../x"):
        with pytest.raises(ValueError, match="leaves the results root"):
            lay.resolve(bad)


@pytest.fixture(scope="module")
def scored(llama_dir, tmp_path_factory):
    """A serial scoring sweep of the tiny Llama on two tasks (hive layout)."""
    root = tmp_path_factory.mktemp("units") / "results"
    rows = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many now?", "answer": str(2 * i + 3)}
            for i in range(40)]
    data = root.parent / "apples.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = _cfg(root, name="units", models=[{"id": str(llama_dir), "name": "tiny"}], tasks=["arithmetic", str(data)])
    work.clear_model_cache()  # earlier tests in this process may hold the same tiny model
    return cfg, run_serial(cfg, track=False, progress=False)


def test_serial_sweep_writes_schema_files_with_provenance(scored):
    cfg, man = scored
    assert not man["failed"] and man["model_loads"] == 1 and len(man["cells"]) == 2
    root = man["root"]
    types = pd.read_parquet(f"{root}/types")
    assert len(types) == 2 * 7 and set(types["task"].astype(str)) == {"arithmetic", "apples"}
    assert set(artifacts.PROVENANCE_SCHEMA.names) <= set(types.columns)
    assert types.groupby("task", observed=True)["sample_hash"].nunique().eq(1).all()
    summary = open(man["summary"]).read()
    assert "| tiny | arithmetic |" in summary and "| tiny | apples |" in summary


def test_placement_json_of_both_layouts_reads_back(scored, llama_dir, tmp_path):
    from plop_core.cli import main

    cfg, man = scored
    cell = next(c for c in man["cells"] if c["task_name"] == "arithmetic")
    hive_file = Layout.hive(man["root"]).resolve(cell["files"]["placement"])
    assert main(["score", "--model", str(llama_dir), "--data", "arithmetic", "--n-samples", "8", "--max-length", "32",
                 "--n-bootstrap", "10", "--out", str(tmp_path / "flat"), "--no-progress"]) == 0
    flat_file = tmp_path / "flat" / "placement.json"
    for path, record in ((hive_file, load_done(plan.plan_sweep(cfg)[0])), (flat_file, None)):
        d = json.loads(path.read_text())
        p = Placement.from_dict(d)
        assert p.to_dict() == d and p.strategy == "plop" and len(p.types) == 3
        if record is not None:
            assert list(p.types) == record.placement["types"] and len(p.target_modules) == record.placement["n_modules"]
        from peft import LoraConfig  # each cell folder holds the adapter_config.json PEFT loads as it is

        assert sorted(LoraConfig.from_pretrained(str(path.parent)).target_modules) == sorted(p.target_modules)


def test_done_rule_and_resume_recompute_only_the_damaged_cell(scored):
    cfg, man = scored
    cells = plan.plan_sweep(cfg)
    assert all(load_done(c) is not None for c in cells)
    victim, other = cells[1], cells[0]
    lay = victim.layout
    types_file = lay.resolve(load_done(victim).files["types"])
    os.remove(types_file)
    assert load_done(victim) is None and load_done(other) is not None
    untouched = lay.resolve(load_done(other).files["types"]).stat().st_mtime_ns
    again = run_serial(cfg, track=False, progress=False)
    cached = {(c["task_name"], c["cached"]) for c in again["cells"]}
    assert cached == {(other.task_name, True), (victim.task_name, False)}
    assert types_file.is_file() and lay.resolve(load_done(other).files["types"]).stat().st_mtime_ns == untouched
    # a truncated Parquet file and a record whose key or paths are not the unit's are "not done" too
    types_file.write_bytes(types_file.read_bytes()[:100])
    assert load_done(victim) is None
    run_serial(cfg, track=False, progress=False)
    rec = json.loads(victim.record.read_text())
    victim.record.write_text(json.dumps({**rec, "key": "not-this-cell"}))
    assert load_done(victim) is None
    victim.record.write_text(json.dumps({**rec, "files": {**rec["files"], "types": "../../../etc/passwd"}}))
    assert load_done(victim) is None
    victim.record.write_text(json.dumps(rec))
    assert load_done(victim) is not None


def test_random_arm_is_redrawn_per_seed_identically_in_compare_and_sweep(llama_dir, tmp_path):
    from plop_core.cli import main

    common = ["--model", str(llama_dir), "--task", "arithmetic", "--seeds", "0,1,2", "--max-steps", "1",
              "--n-train", "4", "--n-eval", "3", "--n-score", "8", "--r", "2", "--max-length", "48", "--no-progress"]
    assert main(["compare", "--arms", "plop,random", *common, "--out", str(tmp_path / "cmp")]) == 0
    runs_cmp = pd.read_parquet(tmp_path / "cmp" / "runs.parquet")
    cfg = load_sweep_config({
        "name": "same", "models": [str(llama_dir)], "tasks": ["arithmetic"],
        "sampling": {"n_samples": 8, "max_length": 48}, "scorer": {"n_bootstrap": 200},
        "finetune": {"method": "sft", "arms": ["plop", "random"], "seeds": [0, 1, 2], "max_steps": 1,
                     "train_samples": 4, "max_length": 48, "batch_size": 4, "lora": {"r": 2}},
        "evaluation": {"n_samples": 3, "max_new_tokens": 128}, "outputs": {"root": str(tmp_path / "sweep")}})
    man = run_serial(cfg, track=False, progress=False)
    (exp,) = man["experiments"]
    runs_sweep = pd.read_parquet(Layout.hive(man["root"]).resolve(exp["files"]["runs"]))
    pick = ["arm", "seed", "types", "rank", "trainable_params"]
    a = runs_cmp[runs_cmp.arm != "base"][pick].sort_values(["arm", "seed"]).reset_index(drop=True)
    b = runs_sweep[runs_sweep.arm != "base"][pick].sort_values(["arm", "seed"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    random_types = a[a.arm == "random"]["types"].tolist()
    assert len(set(random_types)) > 1, random_types  # three seeds, not one fixed draw
    assert (a[a.arm == "plop"]["types"].nunique()) == 1
    import duckdb  # the experiment's tables, each with its documented glob (docs/pipeline.md)

    root = man["root"]
    def count(glob):
        sql = f"select count(*) from read_parquet('{root}/{glob}', hive_partitioning=true)"
        return duckdb.connect().execute(sql).fetchone()[0]

    assert (count("evaluation/**/*.parquet"), count("training/**/*.parquet"),
            count("finetune/**/summary.parquet")) == (7, 6, 3)  # 2 arms x 3 seeds + base; 1 step each; 3 arms
    # same numbers too: the same units ran on the same rows
    assert runs_cmp.set_index(["arm", "seed"])["nll"].to_dict() == pytest.approx(
        runs_sweep.set_index(["arm", "seed"])["nll"].to_dict())


def test_keep_adapters_false_leaves_metrics_only_and_keeps_the_unit_keys(llama_dir, tmp_path):
    """Studies commit their records, not 10 MB adapters: without adapters a finished run is still done
    (its record lists no adapter files), and the flag is not in any key (same numbers, same units)."""
    def sweep(root, keep):
        return load_sweep_config({
            "name": "keep", "models": [str(llama_dir)], "tasks": ["arithmetic"],
            "sampling": {"n_samples": 8, "max_length": 48}, "scorer": {"n_bootstrap": 50},
            "finetune": {"method": "sft", "arms": ["plop"], "seeds": [0], "max_steps": 1, "train_samples": 4,
                         "max_length": 48, "batch_size": 4, "lora": {"r": 2}, "keep_adapters": keep},
            "evaluation": {"n_samples": 3, "max_new_tokens": 8}, "outputs": {"root": str(root)}})

    kept = run_serial(sweep(tmp_path / "kept", True), track=False, progress=False)
    lean_cfg = sweep(tmp_path / "lean", False)
    lean = run_serial(lean_cfg, track=False, progress=False)
    assert lean["experiments"][0]["key"] == kept["experiments"][0]["key"]
    assert list((tmp_path / "kept" / "finetune").rglob("adapter_model.safetensors"))
    assert not list((tmp_path / "lean" / "finetune").rglob("adapter*"))
    (rec,) = [json.loads(p.read_text()) for p in (tmp_path / "lean").rglob("record.json")
              if json.loads(p.read_text()).get("arm") == "plop"]
    assert rec["files"] == {} and rec["train"]["adapter_dir"] is None
    def runs(man):
        return pd.read_parquet(Layout.hive(man["root"]).resolve(man["experiments"][0]["files"]["runs"]))

    assert runs(lean).set_index("arm")["nll"].to_dict() == pytest.approx(runs(kept).set_index("arm")["nll"].to_dict())
    def stamps():  # every record (cells' too) and every file of the experiments (tables, chart)
        root = tmp_path / "lean"
        return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and (
            p.name == "record.json" or p.relative_to(root).parts[0] in ("finetune", "evaluation", "training"))}

    before = stamps()
    assert len([p for p in before if p.name == "runs.parquet"]) == 1 and len(before) >= 8
    again = run_serial(lean_cfg, track=False, progress=False)  # done without adapters: nothing recomputed or rewritten
    assert stamps() == before and again["experiments"] == lean["experiments"]


def test_duckdb_reads_each_table_of_the_root_with_its_documented_glob(scored):
    """docs/pipeline.md lists one glob per table (a glob over the whole root mixes tables with different
    columns and partition keys): each reads with hive partitioning, without plop."""
    import duckdb

    cfg, man = scored
    root = man["root"]
    con = duckdb.connect()
    n = {t: con.execute(f"select count(*) from read_parquet('{root}/{t}/**/*.parquet', hive_partitioning=true)")
         .fetchone()[0] for t in ("modules", "types", "placements", "samples")}
    assert n == {"modules": 2 * 14, "types": 2 * 7, "placements": 2, "samples": 2 * 8}
    tasks = con.execute(f"select distinct task from read_parquet('{root}/samples/**/*.parquet', "
                        "hive_partitioning=true) order by task").fetchall()
    assert tasks == [("apples",), ("arithmetic",)]
    v = con.execute(f"select model, task, nfn from read_parquet('{root}/types/**/*.parquet', hive_partitioning=true) "
                    "where type = 'v' order by task").fetchall()
    assert [(m, t) for m, t, _ in v] == [("tiny", "apples"), ("tiny", "arithmetic")]
