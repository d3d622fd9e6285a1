"""Data-parallel scoring: 2 Ray model hosts vs 1, and the Prefect + Ray sweep vs the serial loop.

Usage:
    .venv/bin/python benchmarks/bench_parallel.py                          # both parts, SmolLM2-135M-Instruct
    .venv/bin/python benchmarks/bench_parallel.py --part hosts --repeats 3
    .venv/bin/python benchmarks/bench_parallel.py --part flow --repeats 2 --n-samples 16

Every process computes with ONE thread (OMP/MKL/torch threads 1), so a host is one core's worth of work.
Part `hosts`: the scoring units of one model on 4 tasks (and, second row, one cell of 4x the rows split
into `--shards` shards) run on a pool of 1 host and on a pool of 2 hosts (`tasks.hosts.HostPool`, Ray
actors holding the model), side by side: both pools are started first and warmed up (each host loads the
model), then every repeat times 1 host and 2 hosts in turn, each on a fresh results root (nothing cached).
Part `flow`: `flows.run_sweep` (Prefect task runs on a local server, Ray host, MLflow, Parquet) against
`plop_core.units.run_serial` in this process over the same units, after one warm-up run of each; the
flow's host stays up between scoring-only sweeps (models loaded), the serial loop keeps its model cache.
Ratios are of medians; the load average of the (shared) machine is printed before and after.
Needs the offline asset: plop assets fetch smollm2-135m-instruct (or --model PATH).
"""

from __future__ import annotations

import os

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_k] = "1"  # before torch is imported anywhere (Ray workers inherit it from this process)

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = ["arithmetic", "gsm8k", "rte", "mbpp"]


def sweep_config(args, root: Path, tasks: list[str], n_samples: int, shards: int = 1) -> dict:
    return {"name": "bench-parallel", "models": [{"id": args.model, "name": "model"}], "tasks": tasks,
            "sampling": {"n_samples": n_samples, "max_length": args.max_length},
            "scorer": {"n_probe": 64, "n_bootstrap": 200, "batch_size": 4, "shards": shards},
            "outputs": {"root": str(root), "experiment": "bench-parallel"}, "resources": {"cpus_per_cell": 1}}


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def run_units(pool, cfg: dict) -> float:
    """Plan the cells under a fresh root, score them on `pool` (one thread per host); wall seconds."""
    from plop_core.config import load_sweep_config
    from plop_core.units import plan
    from tasks.hosts import run_order

    cells = plan.plan_sweep(load_sweep_config(cfg))
    shards = [s for c in cells for s in plan.cell_shards(c)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(pool.hosts)) as ex:
        first = [u for us in run_order(shards or cells) for u in us]  # the flow's order: longest first
        pool.expect(first + (cells if shards else []))
        for r in ex.map(lambda u: pool.run(u, {}), first):
            assert r.key
        if shards:  # then the exact merges
            list(ex.map(lambda c: pool.run(c, {}), cells))
    return time.perf_counter() - t0


def part_hosts(args, tmp: Path) -> None:
    import ray

    from flows.runtime import ray_init_kwargs
    from tasks.hosts import HostPool

    kw = ray_init_kwargs("http://127.0.0.1:9/api", num_cpus=3)  # 1 + 2 hosts exist at once (idle ones use no core)
    kw["runtime_env"]["env_vars"].update({k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    ray.init(**kw)
    pools = {1: HostPool(1, {"num_cpus": 1}), 2: HostPool(2, {"num_cpus": 1})}
    n = args.n_samples
    rows = {f"4 tasks x {n} rows": (TASKS, n, 1), f"1 task x {4 * n} rows, {args.shards} shards": (TASKS[:1], 4 * n,
                                                                                                  args.shards)}
    print(f"# hosts: {args.model}, max_length {args.max_length}, one thread per host; {load()}", flush=True)
    i = 0
    for k, pool in pools.items():  # warm-up: every host loads the model and imports what scoring needs
        for _ in range(k):
            i += 1
            run_units(pool, sweep_config(args, tmp / f"warm{i}", TASKS[:k], 4))
    times = {(r, k): [] for r in rows for k in pools}
    for rep in range(args.repeats):
        for r, (tasks, n, shards) in rows.items():
            for k, pool in pools.items():
                i += 1
                t = run_units(pool, sweep_config(args, tmp / f"run{i}", tasks, n, shards))
                times[(r, k)].append(t)
                print(f"  repeat {rep}: {r}, {k} host(s): {t:.1f} s", flush=True)
    print("\n| work | 1 host (s) | 2 hosts (s) | speed-up |\n|---|---|---|---|")
    for r in rows:
        a, b = statistics.median(times[(r, 1)]), statistics.median(times[(r, 2)])
        print(f"| {r} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print(f"({load()})")
    for p in pools.values():
        p.kill()
    ray.shutdown()


def part_flow(args, tmp: Path) -> None:
    import torch

    from flows import run_sweep
    from flows.runtime import prefect_api, ray_cluster
    from plop_core.config import load_sweep_config
    from plop_core.units import run_serial

    torch.set_num_threads(1)
    print(f"# flow vs serial: {args.model}, {len(TASKS)} tasks x {args.n_samples} rows, one thread; {load()}",
          flush=True)
    with prefect_api() as (api, _), ray_cluster(api, num_cpus=1):
        import ray

        ray.get(ray.remote(lambda: None).remote())  # Ray up before timing anything
        i, times = 0, {"flow": [], "serial": []}
        for rep in range(args.repeats + 1):  # repeat 0 is the warm-up of both
            for kind in ("flow", "serial"):
                i += 1
                cfg = sweep_config(args, tmp / f"{kind}{i}", TASKS, args.n_samples)
                t0 = time.perf_counter()
                man = run_sweep(cfg) if kind == "flow" else run_serial(load_sweep_config(cfg), progress=False)
                t = time.perf_counter() - t0
                assert not man["failed"], man["failed"]
                print(f"  {'warm-up' if rep == 0 else f'repeat {rep}'}: {kind} {t:.1f} s "
                      f"(model loads {man['model_loads']})", flush=True)
                if rep:
                    times[kind].append(t)
    f, s = statistics.median(times["flow"]), statistics.median(times["serial"])
    print(f"\n| runner | median wall (s) | vs serial |\n|---|---|---|\n| run_serial | {s:.1f} | 1.00x |\n"
          f"| Prefect + Ray flow | {f:.1f} | {f / s:.2f}x |")
    print(f"({load()})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["hosts", "flow", "both"], default="both")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="offline asset name or model folder")
    ap.add_argument("--n-samples", type=int, default=16, help="rows scored per task")
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from plop_core.env import setup_offline_env

    setup_offline_env()
    with tempfile.TemporaryDirectory(prefix="plop-bench-par-") as d:
        if args.part in ("hosts", "both"):
            part_hosts(args, Path(d))
        if args.part in ("flow", "both"):
            part_flow(args, Path(d))


if __name__ == "__main__":
    main()
