"""The scorer's hot path, side by side: CPU time of each estimator vs the hook-free forward of the same blocks.

Usage:
    .venv/bin/python benchmarks/bench_hotpath.py                                  # SmolLM2-135M asset, full grid
    .venv/bin/python benchmarks/bench_hotpath.py --lengths 64 256 --batches 1 8 --repeats 3
    .venv/bin/python benchmarks/bench_hotpath.py --lengths 64 --batches 1 --batches-per-call 8 --repeats 9
    .venv/bin/python benchmarks/bench_hotpath.py --lengths 64 --batches 1 --json cell.json   # rows as JSON too

One thread (torch.set_num_threads(1)) and CPU time (time.process_time) of this process, so other jobs on a
shared box distort the numbers less than wall time would. For each (sequence length, batch size) cell the
same batch of real-token-only sequences (no padding) is timed under every variant, interleaved, median of
--repeats:
  forward        model(input_ids, attention_mask): full logits (what a user calls)
  blocks         the hook-free pass the scorer makes (use_cache=False, logits_to_keep=1): the same blocks
                 without hooks; the denominator of the hooks' overhead
  probe_cached   score_nfn(estimator="probe") with baselines already in a directory cache (the default,
                 $PLOP_HOME/baselines, here a temporary folder) after one call
  probe_fresh    score_nfn(estimator="probe", baseline_cache=False): rho(W) of every weight recomputed
  analytic       score_nfn(estimator="analytic") (cache off)
  reference      score_nfn(estimator="reference"): a fresh fp32 unit vector per token and module
  authors        the authors' published scoring logic (method.md): a forward hook on every module that has
                 a weight except embeddings and norms (lm_head included) that normalises W and z in fp32,
                 multiplies, and draws one Gaussian row per position; full logits; no padding mask
Ratios are printed against both denominators, `x blocks` and `x forward`. score_nfn calls use n_bootstrap=0
(the bootstrap is a fixed ~0.1 s of numpy, not the hot path). Peak memory: sampled RSS above the level
before the call (see bench_scoring.PeakMemory), for blocks and probe_cached, in one extra untimed run each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.bench_scoring import PeakMemory, make_texts  # noqa: E402


def authors_scorer(model, batch) -> dict:
    """The published scoring logic, restated from docs/method.md (not the authors' code)."""
    out = {}

    def hook_for(name):
        def hook(mod, args, output):
            z = args[0].float().reshape(-1, args[0].shape[-1])
            w = mod.weight.float()
            w_n = w / ((w ** 2).mean().sqrt() + 1e-8)
            z_n = z / (z.norm(dim=1, keepdim=True) + 1e-8)
            actual = (z_n @ w_n.t()).norm(dim=1).mean().item() / z.shape[1] ** 0.5
            r = torch.randn_like(z_n)
            r = r / (r.norm(dim=1, keepdim=True) + 1e-8)
            random = (r @ w_n.t()).norm(dim=1).mean().item() / z.shape[1] ** 0.5
            out[name] = actual / random
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules()
               if getattr(m, "weight", None) is not None and not isinstance(m, torch.nn.Embedding)
               and "norm" not in n.lower() and m.weight.dim() == 2]
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return out


def _variants(model, tok, texts, encs, cache, common) -> dict:
    from plop_core.nfn import score_nfn

    return {
        "forward": lambda: [model(**enc) for enc in encs],
        "blocks": lambda: [model(**enc, use_cache=False, logits_to_keep=1) for enc in encs],
        "probe_cached": lambda: score_nfn(model, tok, texts, estimator="probe", baseline_cache=cache, **common),
        "probe_fresh": lambda: score_nfn(model, tok, texts, estimator="probe", baseline_cache=False, **common),
        "analytic": lambda: score_nfn(model, tok, texts, estimator="analytic", baseline_cache=False, **common),
        "reference": lambda: score_nfn(model, tok, texts, estimator="reference", **common),
        "authors": lambda: [authors_scorer(model, enc) for enc in encs],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="asset name or folder (plop_core.models)")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], help="variants to leave out (e.g. reference authors)")
    p.add_argument("--batches-per-call", type=int, default=1,
                   help="K batches of the cell's shape per timed call (score_nfn on K x batch texts; K forwards "
                        "for forward/blocks/authors): K=1 charges a call's fixed set-up to one batch, larger K "
                        "shows the per-batch hot path")
    p.add_argument("--json", type=Path, help="also write the printed rows to this JSON file (bench_hotpath_spread)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from plop_core.models import load_model
    from plop_core.nfn import score_nfn

    lm = load_model(args.model, device="cpu", progress=False)
    model, tok = lm.model, lm.tokenizer
    cache = tempfile.mkdtemp(prefix="plop-bench-baselines-")  # a directory cache, like the default
    print(f"model {args.model} ({lm.identity.n_params / 1e6:.0f} M params, {lm.identity.dtype}), 1 thread, CPU time; "
          f"median of {args.repeats} interleaved repeats; {args.batches_per_call} batch(es) per call; "
          "ratios: x blocks (hook-free scorer pass) | x forward")
    header = (f"{'len':>5s} {'batch':>5s} {'variant':>13s} {'cpu s':>8s} {'x blocks':>9s} {'x forward':>10s} "
              f"{'peak MiB':>9s}")
    print(header)
    rows = []
    for length in args.lengths:
        for bsz in args.batches:
            k = args.batches_per_call
            texts = make_texts(bsz * k, words=length * 2, seed=length)
            encs = [tok(texts[i:i + bsz], truncation=True, max_length=length, return_tensors="pt", padding=True)
                    for i in range(0, bsz * k, bsz)]
            assert all(e["attention_mask"].all() for e in encs), "texts too short for the length; want no padding"
            common = dict(batch_size=bsz, max_length=length, n_bootstrap=0, progress=False)
            score_nfn(model, tok, texts, estimator="probe", baseline_cache=cache, **common)  # fill the cache
            variants = _variants(model, tok, texts, encs, cache, common)
            variants = {k: v for k, v in variants.items() if k not in args.skip}
            times = {k: [] for k in variants}
            peaks = {}
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    with torch.no_grad():
                        t = time.process_time()
                        fn()
                        times[name].append(time.process_time() - t)
            for name in ("blocks", "probe_cached"):  # memory in a separate run: the sampler thread costs CPU
                with torch.no_grad(), PeakMemory(torch.device("cpu")) as mem:
                    variants[name]()
                peaks[name] = mem.peak
            med = {k: statistics.median(v) for k, v in times.items()}
            for name, t in med.items():
                rows.append({"length": length, "batch": bsz, "batches_per_call": k, "variant": name, "cpu_s": t,
                             "x_blocks": t / med["blocks"], "x_forward": t / med["forward"],
                             "peak_mib": peaks[name] / 2**20 if name in peaks else None})
                print(f"{length:5d} {bsz:5d} {name:>13s} {t:8.3f} {t / med['blocks']:9.3f} {t / med['forward']:10.3f} "
                      + (f"{peaks[name] / 2**20:9.1f}" if name in peaks else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
