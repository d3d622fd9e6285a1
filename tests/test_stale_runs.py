"""Runs a dead driver left open are ended by the next sweep; live or remote drivers' runs are not.

MLflow (SQLite store): `Tracker.start` marks KILLED the RUNNING parent runs of the same sweep whose
driver process is gone on this host, and the runs nested under them. Prefect (the test server):
`flows.stale.crash_stale_flow_runs` marks Crashed the open flow runs tagged with a dead driver.
The dead driver is a real process that exited; the live one is this test process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from plop_core import driver, tracking
from plop_core.config import load_sweep_config
from plop_core.units.track import Tracker


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_driver_identity_and_liveness():
    me = driver.identity()
    assert me["host"] == socket.gethostname() and me["pid"] == str(os.getpid()) and me["started"]
    assert not driver.is_gone(**me)
    assert driver.is_gone(me["host"], _dead_pid(), "")
    assert driver.is_gone(me["host"], os.getpid(), "1")  # pid reused by a younger process
    assert not driver.is_gone("another-host", _dead_pid(), "")  # never judged: it may be alive


def test_next_sweep_kills_the_stale_mlflow_runs_of_dead_drivers_only(tmp_path):
    cfg = load_sweep_config({"name": "stale", "models": ["m"], "tasks": ["arithmetic"],
                             "outputs": {"root": str(tmp_path), "experiment": "stale"}})
    uri = tracking.resolve_tracking_uri(None, tmp_path)
    exp = tracking.ensure_experiment(uri, "stale", tmp_path)
    host, dead = socket.gethostname(), _dead_pid()

    def parent(name, host, pid, sweep="stale"):
        return tracking.start_run(uri, exp, name, tags={"plop.level": "sweep", "plop.sweep": sweep,
                                                        "plop.driver_host": host, "plop.driver_pid": str(pid)})

    killed = parent("killed", host, dead)
    child = tracking.start_run(uri, exp, "cell", parent_run_id=killed)
    grandchild = tracking.start_run(uri, exp, "arm", parent_run_id=child)
    alive = parent("alive", host, os.getpid())
    remote = parent("remote", "another-host", dead)
    other_sweep = parent("other", host, dead, sweep="not-this-one")
    tracker = Tracker.start(cfg, "serial")
    status = {r: tracking.client_for(uri).get_run(r).info.status
              for r in (killed, child, grandchild, alive, remote, other_sweep, tracker.parent_run_id)}
    assert status == {killed: "KILLED", child: "KILLED", grandchild: "KILLED", alive: "RUNNING", remote: "RUNNING",
                      other_sweep: "RUNNING", tracker.parent_run_id: "RUNNING"}
    tags = tracking.client_for(uri).get_run(tracker.parent_run_id).data.tags
    assert tags["plop.stale_runs_killed"] == ",".join([killed, child, grandchild])
    assert tags["plop.driver_pid"] == str(os.getpid()) and tags["plop.driver_host"] == host
    # a failure path ends the parent and whatever it left open with the same status
    open_cell = tracking.start_run(uri, exp, "cell", parent_run_id=tracker.parent_run_id)
    tracker.end("FAILED")
    assert {tracking.client_for(uri).get_run(r).info.status for r in (open_cell, tracker.parent_run_id)} == {"FAILED"}


@pytest.mark.server
def test_next_sweep_crashes_the_open_flow_runs_of_dead_drivers_only(prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed, Running

    from flows.stale import TAG, crash_stale_flow_runs, driver_tag

    @flow(name="stale-probe")
    def probe():
        pass

    host = socket.gethostname()
    with get_client(sync_client=True) as client:
        ids = {}
        for name, tag in {"dead": f"{TAG}{host}/{_dead_pid()}/", "alive": driver_tag(),
                          "remote": f"{TAG}another-host/{_dead_pid()}/"}.items():
            run = client.create_flow_run(probe, tags=[tag])
            client.set_flow_run_state(run.id, Running(), force=True)
            ids[name] = run.id
        crashed = crash_stale_flow_runs()
        states = {name: client.read_flow_run(i).state.name for name, i in ids.items()}
        for i in (ids["alive"], ids["remote"]):  # leave nothing Running behind this test
            client.set_flow_run_state(i, Crashed(message="test cleanup"), force=True)
    assert str(ids["dead"]) in crashed and str(ids["alive"]) not in crashed and str(ids["remote"]) not in crashed
    assert states == {"dead": "Crashed", "alive": "Running", "remote": "Running"}
