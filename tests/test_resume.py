"""Resume that resumes: `plop sweep` (embedded: its own Prefect server and Ray) is killed with SIGKILL
after some units finished, then rerun with the same command.

Asserted, from what the processes and stores recorded (no mocks):
- no orphans: within seconds of the kill, no process of that run is left (the embedded Prefect server,
  its watchdog, Ray's GCS, raylet and workers);
- the killed run's MLflow parent run and Prefect flow run were left RUNNING (the fault is real), and the
  rerun marks them KILLED / Crashed, naming the dead driver (pid/host tags);
- the rerun reuses exactly the units finished before the kill (manifest `cached`, records untouched:
  same mtime) and computes only the rest; every cell is present once; no temp files are left;
- SIGTERM (what schedulers send first) ends the runs KILLED / Crashed right away instead (exit 143).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from tests.faultkit import (
    assert_every_record_done,
    plop,
    plop_env,
    plop_popen,
    processes,
    temp_files,
    tiny_sweep,
    wait_until,
)

pytestmark = pytest.mark.slow

N_CELLS = 6


def _flow_runs(prefect_home: Path) -> list[tuple[str, str, list[str]]]:
    """(name, state name, tags) of every flow run in the embedded server's database."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        rows = db.execute("select name, state_name, tags from flow_run order by created").fetchall()
    return [(n, s, json.loads(t)) for n, s, t in rows]


def _mlflow_parents(root: Path, name: str):
    from plop_core import tracking

    runs = tracking.find_runs(f"sqlite:///{root / 'mlflow.db'}", name)
    return runs[runs["tags.plop.level"] == "sweep"].sort_values("start_time")


def _start(tmp_path: Path, name: str, n: int = N_CELLS):
    cfg = tiny_sweep(tmp_path, name, n_tasks=n, wider=True, sampling={"n_samples": 16, "max_length": 64},
                     scorer={"n_probe": 256, "n_bootstrap": 1000, "batch_size": 2})
    ray_tmp = f"/tmp/pk-{uuid.uuid4().hex[:6]}"
    env = plop_env(PREFECT_API_URL=None, PREFECT_HOME=str(tmp_path / "prefect-home"), PLOP_RAY_TMP=ray_tmp)
    return cfg, env, ray_tmp


def _leftovers(home: Path, ray_tmp: str) -> dict[int, str]:
    ports = [p.stem.removeprefix("server-") for p in home.glob("server-*.log")]
    found = processes(ray_tmp)
    for port in ports:
        found |= processes("prefect", "server", "start", "--port", port)
    return found


def test_kill_9_driver_then_rerun_resumes(tmp_path):
    cfg, env, ray_tmp = _start(tmp_path, "killed")
    root, home = tmp_path / "results", tmp_path / "prefect-home"
    driver = plop_popen("sweep", cfg, "--num-cpus", "2", env=env, log=tmp_path / "first.log")
    # let some cells finish, then kill the driver with no chance to clean up
    first = wait_until(lambda: list(root.glob("cells/**/record.json")), timeout=900, step=0.05)
    assert first, (tmp_path / "first.log").read_text()[-3000:]
    assert _leftovers(home, ray_tmp), "the run's server and Ray should be up while it runs"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    t0 = time.monotonic()
    # no orphan: the embedded server (watchdog) and Ray (fate-sharing with the driver) go within seconds
    left = wait_until(lambda: not _leftovers(home, ray_tmp), timeout=30)
    assert left, _leftovers(home, ray_tmp)
    print(f"kill -9: no process of the run left after {time.monotonic() - t0:.1f} s")  # measured, not asserted
    finished = {str(p): p.stat().st_mtime_ns for p in root.glob("cells/**/record.json")}
    assert 0 < len(finished) < N_CELLS, "kill landed before the first or after the last cell; retune"

    # the fault is real: the killed run's records were left open
    parents = _mlflow_parents(root, "killed")
    assert list(parents["status"]) == ["RUNNING"] and parents["tags.plop.driver_pid"].iloc[0] == str(driver.pid)
    assert [s for _, s, _ in _flow_runs(home)] == ["Running"]

    r = plop("sweep", cfg, "--num-cpus", "2", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    man = json.loads((root / "sweeps" / "killed" / "manifest.json").read_text())
    cached = {c["task_name"] for c in man["cells"] if c["cached"]}
    records_before = {json.loads(Path(p).read_text())["task_name"] for p in finished}
    assert cached == records_before and len(man["cells"]) == N_CELLS and not man["failed"]
    assert {p: Path(p).stat().st_mtime_ns for p in finished} == finished  # reused, not rewritten
    assert assert_every_record_done(root) == N_CELLS and temp_files(root) == []

    # the rerun ended what the dead driver left open
    parents = _mlflow_parents(root, "killed")
    assert list(parents["status"]) == ["KILLED", "FINISHED"]
    assert parents["tags.plop.stale_runs_killed"].iloc[1].split(",")[0] == parents["run_id"].iloc[0]
    runs = _flow_runs(home)
    assert [s for _, s, _ in runs] == ["Crashed", "Completed"]
    assert runs[0][2] == [t for t in runs[0][2] if t.startswith("plop-driver=")] and f"/{driver.pid}/" in runs[0][2][0]
    assert not _leftovers(home, ray_tmp)


def test_sigterm_ends_the_runs_killed_and_crashed(tmp_path):
    cfg, env, ray_tmp = _start(tmp_path, "terminated", n=3)
    root, home = tmp_path / "results", tmp_path / "prefect-home"
    driver = plop_popen("sweep", cfg, "--num-cpus", "2", env=env, log=tmp_path / "run.log")
    assert wait_until(lambda: list(root.glob("cells/**/record.json")), timeout=900, step=0.05)
    driver.send_signal(signal.SIGTERM)
    assert driver.wait(120) == 143
    log = (tmp_path / "run.log").read_text()
    assert log.strip().splitlines()[-1] == ("plop sweep: error: terminated (SIGTERM); finished results are kept, "
                                            "rerun the same command to continue"), log[-3000:]
    assert list(_mlflow_parents(root, "terminated")["status"]) == ["KILLED"]
    assert [s for _, s, _ in _flow_runs(home)] == ["Crashed"]
    assert wait_until(lambda: not _leftovers(home, ray_tmp), timeout=30)
