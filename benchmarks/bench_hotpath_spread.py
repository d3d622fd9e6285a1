"""How much one hot-path ratio moves between processes: `bench_hotpath.py` on one cell, N fresh processes.

Usage:
    .venv/bin/python benchmarks/bench_hotpath_spread.py                      # 64 x 1, 15 processes x 9 repeats
    .venv/bin/python benchmarks/bench_hotpath_spread.py --length 256 --batch 8 --processes 9

Why: a 64-token, batch-1 call is one ~0.22 s forward; on a shared VM one process's median ratio moves by more
than the hooks' cost (1.06 and 1.14 in two back-to-back runs of the same code). Each process loads the model,
times the variants interleaved (median of --repeats, CPU time, one thread) and reports its ratio; this script
prints every process's `probe_cached x blocks` and `x forward` ratio, then their median, quartiles and the share
of processes at or under --target. Run it on a quiet box: any other job shifts every process alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """Lower quartile, median, upper quartile (statistics.quantiles, inclusive method)."""
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], q[1], q[2]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--processes", type=int, default=15)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--variant", default="probe_cached", help="the variant whose ratio is collected")
    p.add_argument("--target", type=float, default=1.10, help="the ratio to count processes against (x blocks)")
    args = p.parse_args(argv)
    keep = {"forward", "blocks", args.variant}
    skip = [v for v in ("probe_cached", "probe_fresh", "analytic", "reference", "authors") if v not in keep]
    print(f"{args.variant} at length {args.length}, batch {args.batch}: {args.processes} processes x "
          f"{args.repeats} interleaved repeats (median per process), one thread, CPU time", flush=True)
    x_blocks, x_forward = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp) / f"{i}.json"
            subprocess.run([sys.executable, str(HERE / "bench_hotpath.py"), "--model", args.model,
                            "--lengths", str(args.length), "--batches", str(args.batch), "--repeats",
                            str(args.repeats), "--skip", *skip, "--json", str(out)],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            row = next(r for r in json.loads(out.read_text()) if r["variant"] == args.variant)
            x_blocks.append(row["x_blocks"])
            x_forward.append(row["x_forward"])
            print(f"  process {i + 1:2d}: x blocks {row['x_blocks']:.3f}  x forward {row['x_forward']:.3f}  "
                  f"({row['cpu_s']:.3f} s)", flush=True)
    for name, vals in (("x blocks", x_blocks), ("x forward", x_forward)):
        lo, med, hi = quartiles(vals)
        print(f"{name:>9s}: median {med:.3f}, quartiles {lo:.3f}-{hi:.3f}, range {min(vals):.3f}-{max(vals):.3f}")
    under = sum(v <= args.target for v in x_blocks)
    print(f"processes at or under {args.target:.2f}x blocks: {under} of {len(x_blocks)}")


if __name__ == "__main__":
    main()
