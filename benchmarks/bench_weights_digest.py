"""Cost of verifying weights on every load: full sha256 vs the content-keyed cached digest vs the load itself.

Usage:
    PLOP_HOME=... python benchmarks/bench_weights_digest.py [--model smollm2-135m-instruct] [--repeat 3]

Why: `plop_core.models.weights_sha256` caches digests keyed by (inode, size, mtime_ns, ctime_ns), and offline
assets are checked against their manifest on every resolve. This prints, side by side in one run, the
warm-cache wall of hashing the weights, of the cached lookup plus the safetensors header checks (what a
load pays), and of `load_model`, as ratios to the load.
"""

from __future__ import annotations

import argparse
import statistics
import time

from plop_core.models import load_model, resolve
from plop_core.weights import check_safetensors, weight_files, weights_sha256


def best(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    _, _, folder = resolve(a.model, progress=False)
    size = sum(f.stat().st_size for f in weight_files(folder)) / 1e6
    weights_sha256(folder, cache=False)  # warm the page cache
    full = best(lambda: weights_sha256(folder, cache=False), a.repeat)
    cached = best(lambda: ([check_safetensors(f) for f in weight_files(folder)], weights_sha256(folder)), a.repeat)
    load = best(lambda: load_model(a.model, progress=False), a.repeat)
    print(f"{a.model}: {size:.0f} MB of safetensors, best/median of {a.repeat} (warm page cache)")
    for name, (b, m) in (("full sha256", full), ("cached digest + header check", cached), ("load_model", load)):
        print(f"  {name:30s} {b:8.3f} s  (median {m:.3f} s)  = {b / load[0]:.3f}x load_model")


if __name__ == "__main__":
    main()
