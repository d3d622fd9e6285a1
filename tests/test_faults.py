"""Faults injected for real, each asserting what a user is promised (docs/reliability.md):

- planted pickles in a results root (Prefect result records, *.pkl, a record.json replaced) are never
  loaded, through the Prefect flow and `--serial`, fresh and cached, with Prefect's result persistence
  switched on by the environment (a positive control shows the planted record does run code when a
  Prefect task with a cache is pointed at it);
- kill -9 of a Ray worker mid-cell: Ray retries the unit, every cell is present once, no temp files;
- a read-only and a full results root (tmpfs): one-line errors, nothing half-written, resumable;
- two sweeps at once (`--serial` and Prefect) on one root and one MLflow store: both finish, once each;
- out of memory (RLIMIT_AS set by the test) in one cell: the sweep finishes the others and names it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest

from tests.faultkit import (
    assert_every_record_done,
    plop,
    plop_env,
    plop_popen,
    records,
    remount,
    temp_files,
    tiny_sweep,
    tmpfs,
    wait_until,
)

pytestmark = pytest.mark.slow


def _ray_tmp() -> str:
    return f"/tmp/pr-{uuid.uuid4().hex[:6]}"  # short: Ray's AF_UNIX socket paths


def _manifest(root: Path, name: str) -> dict:
    return json.loads((root / "sweeps" / name / "manifest.json").read_text())


# ---------------------------------------------------------------- planted pickles


class Payload:
    """Unpickling this creates the marker file (a stand-in for any code an attacker would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_prefect_record(folder: Path, key: str, marker: Path) -> Path:
    """A genuine Prefect result record (Prefect's own writer, pickle serializer) holding the payload."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore
    from prefect.serializers import PickleSerializer

    folder.mkdir(parents=True, exist_ok=True)
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(folder)), serializer=PickleSerializer())
    store.write(obj=Payload(marker), key=key)
    assert not marker.exists()
    return folder / key


def _plant_everywhere(root: Path, prefect_home: Path, marker: Path) -> set[str]:
    """Pickles wherever a reader might look: Prefect's result folders, *.pkl next to records, and a cell's
    record.json replaced by a pickle. Returns the planted paths."""
    import pickle

    planted = set()
    for folder in (root / ".prefect-results", prefect_home / "storage"):
        for key in ("planted", uuid.uuid4().hex, "score-cell-" + uuid.uuid4().hex[:16]):
            planted.add(str(_plant_prefect_record(folder, key, marker)))
    blob = pickle.dumps(Payload(marker))
    for folder in [root, *[p.parent for p in root.rglob("record.json")]]:
        for name in ("result.pkl", "record.pkl"):
            (folder / name).write_bytes(blob)
            planted.add(str(folder / name))
    first = next(iter(sorted(root.glob("cells/**/record.json"))), None)
    if first is not None:
        first.write_bytes(blob)  # an attacker replaced a record: it must be recomputed, never unpickled
    return planted


def test_planted_prefect_record_runs_code_when_a_cached_task_reads_it(tmp_path, prefect_api):
    """Positive control: the planted record is live. A Prefect task whose cache key is the planted key
    and whose result storage is the planted folder unpickles it, and the marker appears."""
    from prefect import flow, task
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    marker = tmp_path / "PWNED"
    _plant_prefect_record(tmp_path / ".prefect-results", "planted", marker)

    @task(cache_key_fn=lambda *_: "planted", persist_result=True)
    def cached_task():
        return "computed"

    @flow
    def victim():
        return cached_task()

    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: tmp_path / ".prefect-results"}):
        victim()
    assert marker.exists()


def test_planted_pickles_are_never_loaded(tmp_path, prefect_api):
    marker = tmp_path / "PWNED"
    home = tmp_path / "prefect-home"
    attack = dict(PREFECT_RESULTS_PERSIST_BY_DEFAULT="true", PREFECT_RESULTS_DEFAULT_SERIALIZER="pickle",
                  PREFECT_HOME=str(home))
    planted: set[str] = set()
    for mode in ("prefect", "serial"):
        root = tmp_path / f"results-{mode}"
        cfg = tiny_sweep(tmp_path, f"planted-{mode}", n_tasks=2, root=root)
        env = plop_env(PREFECT_API_URL=prefect_api if mode == "prefect" else None, PLOP_RAY_TMP=_ray_tmp(),
                       PREFECT_LOCAL_STORAGE_PATH=str(root / ".prefect-results"), **attack)
        args = ["sweep", cfg, "--num-cpus", "2"] + (["--serial"] if mode == "serial" else [])
        root.mkdir()
        planted |= _plant_everywhere(root, home, marker)  # fresh run: Prefect's folders and the root
        r = plop(*args, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        planted |= _plant_everywhere(root, home, marker)  # cached run: next to every record too
        r = plop(*args, env=env)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert not marker.exists(), mode
        # nothing of Prefect's was written where it would be read back: only what we planted is there
        written = {str(p) for d in (root / ".prefect-results", home / "storage") for p in d.iterdir()}
        assert written <= planted, written - planted
        # the cell whose record.json was replaced by a pickle was recomputed (its record is JSON again); the
        # other cell was reused
        man = _manifest(root, f"planted-{mode}")
        assert sorted(c["cached"] for c in man["cells"]) == [False, True], man["cells"]
        assert assert_every_record_done(root) == 2


# ---------------------------------------------------------------- kill -9 of a Ray worker mid-cell


def _task_runs(flow_run_id) -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted((r.name, r.state.name) for r in runs)


def test_kill_ray_worker_mid_cell_retries_the_unit(tmp_path, prefect_api, monkeypatch):
    from flows import run_sweep
    from flows.runtime import ray_cluster
    from plop_core.config import load_sweep_config

    n = 4
    cfg = load_sweep_config(str(tiny_sweep(tmp_path, "worker-kill", n_tasks=n)))
    root = Path(cfg.outputs.root)
    killed = {}

    def kill_worker_after_first_cell():
        first = wait_until(lambda: list(root.glob("cells/**/record.json")), timeout=600, step=0.05)
        if first:
            pid = json.loads(first[0].read_text())["runtime"]["worker_pid"]  # the Ray worker (model host) scoring it
            os.kill(pid, signal.SIGKILL)
            killed.update(pid=pid, before={str(p) for p in root.glob("cells/**/record.json")})

    monkeypatch.setenv("PLOP_RAY_TMP", _ray_tmp())
    with ray_cluster(prefect_api, num_cpus=2):
        t = threading.Thread(target=kill_worker_after_first_cell, daemon=True)
        t.start()
        man = run_sweep(cfg)
        t.join(5)
    assert killed and not man["failed"] and len(man["cells"]) == n
    recs = {k: v for k, v in records(root).items() if k.startswith("cells/")}
    after_kill = [r for k, r in recs.items() if str(root / k) not in killed["before"]]
    assert after_kill and all(r["runtime"]["worker_pid"] != killed["pid"] for r in after_kill)  # by the retry
    assert assert_every_record_done(root) == n  # every cell present once, each file readable
    assert temp_files(root) == []
    # Prefect shows it: every cell ends Completed (the one in flight on the killed host by its retry, on the
    # restarted host); nothing left Running
    runs = _task_runs(man["flow_run_id"])
    states = {}
    for name, state in runs:
        states.setdefault(name, []).append(state)
    cells = {k: sorted(v) for k, v in states.items() if k.startswith("score tiny on")}
    assert len(cells) == n and all(v.count("Completed") + v.count("Cached") >= 1 for v in cells.values())
    assert not any(s in ("Running", "Pending") for _, s in runs), runs


# ---------------------------------------------------------------- read-only and full results roots


def test_read_only_results_root(tmp_path, prefect_api):
    cfg = tiny_sweep(tmp_path, "read-only", n_tasks=1, root=tmp_path / "mnt")
    with tmpfs(tmp_path / "mnt", "64m") as root:
        r = plop("sweep", cfg, "--serial")
        assert r.returncode == 0, r.stderr[-2000:]
        before = {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}
        remount(root, "ro")
        for args, env in ((["--serial"], plop_env()),
                          (["--num-cpus", "2"], plop_env(PREFECT_API_URL=prefect_api, PLOP_RAY_TMP=_ray_tmp()))):
            r = plop("sweep", cfg, *args, env=env)
            assert r.returncode == 2, r.stderr[-2000:]
            lines = r.stderr.strip().splitlines()
            assert lines[0] == "plop sweep: error: preflight found 2 problems (nothing was started):", lines
            assert lines[1].startswith("  - outputs.root: ") and "read-only file system" in lines[1], lines
            assert lines[2].startswith("  - outputs.mlflow_uri: SQLite file ") and "read-only file system" in lines[2]
            assert "Traceback" not in r.stdout + r.stderr
        assert {str(p): p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_read_only_root_through_the_flow_parameters(tmp_path, prefect_api):
    """A deployment calls the flow directly: the flow's own preflight refuses the root (Failed, one line)."""
    from flows.sweep import plop_sweep
    from plop_core.config import load_sweep_config
    from plop_core.errors import explain

    cfg = load_sweep_config(str(tiny_sweep(tmp_path, "read-only-flow", n_tasks=1, root=tmp_path / "mnt")))
    with tmpfs(tmp_path / "mnt", "1m", "ro"):
        state = plop_sweep(config=cfg.model_dump(mode="json"), return_state=True)
        assert state.is_failed() and "outputs.root" in state.message and "read-only" in state.message
        with pytest.raises(ValueError) as e:
            state.result()
        assert "read-only file system" in explain(e.value)
        assert list((tmp_path / "mnt").iterdir()) == []


def _fill(folder: Path) -> Path:
    """Write a file until the device is full (another job filling a shared disk)."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 2**20)
                f.flush()
        except OSError:
            pass
    return filler


def test_full_results_root_then_resume(tmp_path):
    """The results root fills up mid-sweep (after the first cell): one-line error naming the full device, every
    record left is a finished unit (nothing half-written, no temp files); after freeing space the same
    command finishes, reusing what was done."""
    n = 3
    cfg = tiny_sweep(tmp_path, "full", n_tasks=n, root=tmp_path / "mnt")
    with tmpfs(tmp_path / "mnt", "64m") as root:
        run = plop_popen("sweep", cfg, "--serial", log=tmp_path / "run.log")
        assert wait_until(lambda: list(root.glob("cells/**/record.json")), timeout=600, step=0.05)
        filler = _fill(root)
        assert run.wait(600) == 2, (tmp_path / "run.log").read_text()[-3000:]
        out = (tmp_path / "run.log").read_text()
        last = out.strip().splitlines()[-1]
        assert last.startswith("plop sweep: error: no space left on the device"), out[-3000:]
        assert "free space there" in last and "Traceback" not in out
        done = assert_every_record_done(root)
        assert 1 <= done < n and temp_files(root) == []
        filler.unlink()
        r = plop("sweep", cfg, "--serial")
        assert r.returncode == 0, r.stderr[-2000:]
        man = _manifest(root, "full")
        assert sum(c["cached"] for c in man["cells"]) == done and assert_every_record_done(root) == n
        assert temp_files(root) == []


# ---------------------------------------------------------------- two sweeps at once on one root


def test_two_concurrent_sweeps_on_one_root_and_mlflow_store(tmp_path, prefect_api):
    from plop_core import tracking

    n = 3
    cfg = tiny_sweep(tmp_path, "together", n_tasks=n)
    root = tmp_path / "results"
    procs = {"serial": plop_popen("sweep", cfg, "--serial", log=tmp_path / "serial.log"),
             "prefect": plop_popen("sweep", cfg, "--num-cpus", "2", log=tmp_path / "prefect.log",
                                   env=plop_env(PREFECT_API_URL=prefect_api, PLOP_RAY_TMP=_ray_tmp()))}
    for name, p in procs.items():
        assert p.wait(900) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    assert assert_every_record_done(root) == n and temp_files(root) == []
    man = _manifest(root, "together")
    assert not man["failed"] and len(man["cells"]) == n
    runs = tracking.find_runs(man["mlflow_uri"], "together")
    parents = runs[runs["tags.plop.level"] == "sweep"]
    assert len(parents) == 2 and set(parents["status"]) == {"FINISHED"}
    assert set(parents["tags.plop.flow"]) == {"serial", "plop-sweep"}
    assert set(runs["status"]) == {"FINISHED"} and (runs["tags.plop.level"] == "cell").sum() == 2 * n


# ---------------------------------------------------------------- a unit failing inside the Prefect flow


def test_failed_unit_in_the_flow_ends_failed_with_partial_results(tmp_path, prefect_api):
    """A model whose weights hold a NaN passes preflight (headers are fine) and fails its cell on a Ray
    worker (retried once): the flow run ends Failed, the MLflow parent run FAILED, the good cell is written,
    and `plop sweep` prints two lines naming the failed unit and why, exit status 1."""
    import torch
    import yaml
    from prefect.client.orchestration import get_client

    from plop_core import tracking
    from tests.tiny import save_tiny

    cfg_path = tiny_sweep(tmp_path, "nan", n_tasks=1)
    nan_dir = save_tiny("llama", tmp_path / "nan-llama", seed=1)
    from safetensors.torch import load_file, save_file

    weights = load_file(nan_dir / "model.safetensors")
    name = next(k for k in weights if k.endswith("layers.0.self_attn.q_proj.weight"))
    weights[name][0, 0] = torch.nan
    save_file(weights, nan_dir / "model.safetensors", metadata={"format": "pt"})
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["models"].append({"id": str(nan_dir), "name": "nan"})
    cfg_path.write_text(yaml.safe_dump(cfg))
    r = plop("sweep", cfg_path, "--num-cpus", "2", env=plop_env(PREFECT_API_URL=prefect_api, PLOP_RAY_TMP=_ray_tmp()))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    err = r.stderr.strip().splitlines()
    assert err[-2].startswith("plop sweep: error: 1 of 2 unit(s) failed: score nan on t0: "), err[-3:]
    assert "non-finite" in err[-2] and "self_attn.q_proj" in err[-2]
    assert err[-1].startswith("partial results: 1 unit(s) written, summary ") and err[-1].endswith(
        "rerun the same command to retry only the failed units")
    root = Path(cfg["outputs"]["root"])
    man = _manifest(root, "nan")
    assert [(c["model_name"], c["ok"]) for c in man["cells"]] == [("tiny", True), ("nan", False)]
    assert assert_every_record_done(root) == 1
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(man["flow_run_id"]).state
    assert state.name == "Failed" and "1 of 2 unit(s) failed: score nan on t0" in state.message
    runs = tracking.find_runs(man["mlflow_uri"], "nan")
    assert list(runs[runs["tags.plop.level"] == "sweep"]["status"]) == ["FAILED"]


# ---------------------------------------------------------------- out of memory in one cell


def _wide_llama(path: Path) -> Path:
    """A 1-layer Llama whose MLP is 2**22 wide: ~200 MB of weights, but one 256-token sequence needs
    4 GB per MLP activation (gate and up: 8 GB), so no batch size fits under the test's memory limit."""
    import torch
    import transformers as T

    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = T.LlamaConfig(hidden_size=4, intermediate_size=2**22, num_hidden_layers=1, num_attention_heads=1,
                        num_key_value_heads=1, max_position_embeddings=256, vocab_size=512,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_out_of_memory_in_one_cell_fails_it_alone(tmp_path):
    import resource

    import yaml

    cfg_path = tiny_sweep(tmp_path, "oom", n_tasks=1, sampling={"n_samples": 4, "max_length": 256},
                          scorer={"n_probe": 16, "n_bootstrap": 20, "batch_size": 4})
    cfg = yaml.safe_load(cfg_path.read_text())
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"text": " ".join(f"word{i * 7 + j} is {j}" for j in range(400))}) + "\n"
                            for i in range(8)))
    cfg["models"].append({"id": str(_wide_llama(tmp_path / "wide-llama")), "name": "wide"})
    cfg["tasks"] = [str(long)]
    cfg_path.write_text(yaml.safe_dump(cfg))
    limit = 6 * 2**30  # address space: a tiny-model cell needs well under this; one wide-model sequence > 8 GB

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    r = plop("sweep", cfg_path, "--serial", preexec_fn=cap)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    err = r.stderr.strip().splitlines()
    assert err[-2].startswith("plop sweep: error: 1 of 2 unit(s) failed: score wide on long: "), err[-3:]
    assert "memory" in err[-2].lower() and err[-1].startswith("partial results: 1 unit(s) written, summary ")
    print("\n".join(err[-2:]))  # the measured message (docs/reliability.md)
    root = Path(cfg["outputs"]["root"])
    man = _manifest(root, "oom")
    assert [(c["model_name"], c["ok"]) for c in man["cells"]] == [("tiny", True), ("wide", False)]
    assert assert_every_record_done(root) == 1 and temp_files(root) == []
    assert "## Failed units" in (root / "sweeps" / "oom" / "summary.md").read_text()
