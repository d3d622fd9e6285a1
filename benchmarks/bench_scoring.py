"""Cost of NFN scoring relative to a plain forward pass, in one process, over the same batches.

Usage:
    .venv/bin/python benchmarks/bench_scoring.py                       # random-init SmolLM2-135M-shaped Llama
    .venv/bin/python benchmarks/bench_scoring.py --model /path/to/model --dtype bfloat16
    .venv/bin/python benchmarks/bench_scoring.py --batches 2 --batch-size 8 --seq-len 256 --repeats 3 --threads 2

What is timed (interleaved: every repeat runs each variant once, in turn; the median is reported):
  forward        model(input_ids, attention_mask) under no_grad: what a user would call (full logits)
  forward_last   the same call as the scorer makes (use_cache=False, logits_to_keep=1), no hooks:
                 the honest denominator for the hooks' overhead
  probe          score_nfn(estimator="probe") with baselines already cached (they depend on the
                 weights only: computed once per model, timed separately as probe_baselines)
  reference      score_nfn(estimator="reference"): the authors' per-token random vectors
Peak memory: CUDA max_memory_allocated on GPU; on CPU the peak resident set size above the level
before the call, sampled every 2 ms (tracemalloc does not see torch's allocations).
The default model is a randomly initialised Llama with SmolLM2-135M's shape (hidden 576, 30 layers,
9/3 heads, intermediate 1536, vocab 49152, tied embeddings): no download needed. Texts are random
words long enough that every sequence has exactly --seq-len tokens (no padding).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def smollm2_shaped_llama(seed: int = 0):
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      intermediate_size=1536, vocab_size=49152, max_position_embeddings=2048,
                      tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).eval()


def load(args):
    if args.model is None:
        from tests.tiny import tiny_tokenizer

        return smollm2_shaped_llama(), tiny_tokenizer(), "random-init Llama, SmolLM2-135M shape"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    return model, tok, args.model


def make_texts(n: int, words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = ("the of and to in is was for on that with as by at from his her this which or an be are "
             "clips friends April May sold half many how altogether answer question robe bolts fiber "
             "def return add premise hypothesis entails quick brown fox jumps lazy dog cat sleeps sun").split()
    return [" ".join(rng.choice(vocab) for _ in range(words)) + f" {i}" for i in range(n)]


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled RSS above the starting level."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        self.proc, self.stop = psutil.Process(), threading.Event()
        self.start = self.proc.memory_info().rss
        self.max_rss = self.start

        def sample():
            while not self.stop.is_set():
                self.max_rss = max(self.max_rss, self.proc.memory_info().rss)
                time.sleep(0.002)
        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.stop.set()
            self.thread.join()
            self.peak = max(self.max_rss, self.proc.memory_info().rss) - self.start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="local model folder (default: random SmolLM2-135M-shaped Llama)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, default=2, help="batches per timed call")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (= max_length)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    p.add_argument("--n-probe", type=int, default=512)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--skip-reference", action="store_true", help="time only forward and probe")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from plop_core.nfn import score_nfn

    model, tok, label = load(args)
    model.to(device=args.device, dtype=getattr(torch, args.dtype))
    device = next(model.parameters()).device
    n_seq = args.batches * args.batch_size
    texts = make_texts(n_seq, words=args.seq_len * 2, seed=0)
    ids = tok(texts, truncation=True, max_length=args.seq_len, return_tensors="pt", padding=True)
    assert ids["attention_mask"].all(), "texts too short for --seq-len; the benchmark wants no padding"
    batches = [(ids["input_ids"][i:i + args.batch_size].to(device), ids["attention_mask"][i:i + args.batch_size].to(device))
               for i in range(0, n_seq, args.batch_size)]
    n_tokens = n_seq * args.seq_len

    def forward(**extra):
        with torch.no_grad():
            for x, m in batches:
                model(input_ids=x, attention_mask=m, **extra)

    cache: dict = {}
    common = dict(batch_size=args.batch_size, max_length=args.seq_len, n_probe=args.n_probe, progress=False)
    t0 = time.perf_counter()
    score_nfn(model, tok, texts, estimator="probe", baseline_cache=cache, n_bootstrap=0, **common)
    first_probe = time.perf_counter() - t0
    variants = {
        "forward": lambda: forward(),
        "forward_last": lambda: forward(use_cache=False, logits_to_keep=1),
        "probe": lambda: score_nfn(model, tok, texts, estimator="probe", baseline_cache=cache, **common),
    }
    if not args.skip_reference:
        variants["reference"] = lambda: score_nfn(model, tok, texts, estimator="reference", **common)
    forward()  # warm-up (allocator, kernels)
    times = {k: [] for k in variants}
    peaks = {k: 0 for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            with PeakMemory(device) as mem:
                t = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
            peaks[name] = max(peaks[name], mem.peak)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model: {label}  dtype {args.dtype}  device {device}  threads {torch.get_num_threads()}")
    print(f"{args.batches} batches x {args.batch_size} seqs x {args.seq_len} tokens = {n_tokens} tokens; "
          f"{args.repeats} interleaved repeats (median)")
    print(f"probe_baselines (first probe call incl. rho of every weight, n_probe {args.n_probe}): "
          f"{first_probe - med['forward_last']:.2f} s extra, once per model")
    print(f"{'variant':14s} {'median s':>9s} {'tok/s':>9s} {'x forward':>10s} {'x fwd_last':>11s} {'peak MiB':>9s}")
    for name, t in med.items():
        print(f"{name:14s} {t:9.3f} {n_tokens / t:9.0f} {t / med['forward']:10.3f} {t / med['forward_last']:11.3f} "
              f"{peaks[name] / 2**20:9.1f}")
    print("all times:", {k: [round(x, 3) for x in v] for k, v in times.items()})


if __name__ == "__main__":
    main()
