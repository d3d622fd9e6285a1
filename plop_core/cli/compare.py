"""`plop compare`: finetune LoRA arms (plop, attn, mlp, all, ...) at a matched trainable-parameter budget
on one model and task, evaluate each on held-out rows (and the base model), and print the per-arm table.

Usage:
    plop compare --model smollm2-135m-instruct --task gsm8k --arms plop,attn,mlp,all --seeds 0 \\
        --max-steps 20 --n-eval 32 --out results/compare
    plop compare --model ./my-model --task arithmetic --arms plop,q+v --seeds 0,1,2 --method sft --metrics nll,exact_match

Arms: strategies (plop, plop_inverse, attn, mlp, all, random, peft_default) or explicit module types joined
with '+' (e.g. q+v+o). By default every arm's LoRA rank is chosen so its trainable parameters match the
plop arm's at --r (the paper's protocol); --no-budget-match trains all arms at rank --r.
It is the serial runner (plop_core.units) of a one-model, one-task sweep, so it decides placements,
ranks and the `random` arm (redrawn per seed) exactly as `plop sweep` does. Writes into --out (flat
layout): the scoring cell's files (types/modules/placements.parquet, placement.json, heatmap, sample),
evaluation.parquet and training.parquet (with provenance columns), runs.parquet and summary.parquet,
comparison_<metric>.png, train/eval rows, and each run's adapter and record under runs/<arm>_seed<s>/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="finetune LoRA arms at matched budget and compare them with intervals",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="offline asset name (plop assets list), local folder, or hub id")
    p.add_argument("--task", required=True, help="task name (plop tasks list) or a local data file")
    p.add_argument("--arms", default="plop,attn,mlp,all",
                   help="comma-separated arms; explicit types joined with '+' (default: plop,attn,mlp,all)")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    p.add_argument("--method", default="sft", choices=["sft", "grpo"], help="finetuning method (default: sft)")
    p.add_argument("--max-steps", type=int, default=20, help="optimizer steps per run (default: 20)")
    p.add_argument("--batch-size", type=int, default=4, help="training batch size (default: 4)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 4e-4 SFT, the paper's)")
    p.add_argument("--r", type=int, default=16, help="LoRA rank of the plop arm; others are budget-matched")
    p.add_argument("--no-budget-match", action="store_true", help="train every arm at rank --r")
    p.add_argument("--k", type=int, default=3, help="module types chosen by plop/plop_inverse/random (default 3)")
    p.add_argument("--max-length", type=int, default=256, help="training/eval tokens per row (default: 256)")
    p.add_argument("--n-train", type=int, default=64, help="training rows (default: 64)")
    p.add_argument("--n-eval", type=int, default=32, help="held-out rows evaluated (default: 32)")
    p.add_argument("--n-score", type=int, default=32, help="rows used for NFN scoring (default: 32)")
    p.add_argument("--metrics", default="nll",
                   help="comma-separated: nll, exact_match, multiple_choice (default: nll; cheap on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation budget for exact_match")
    p.add_argument("--num-generations", type=int, default=4, help="GRPO completions per prompt")
    p.add_argument("--max-completion-length", type=int, default=64, help="GRPO completion tokens")
    p.add_argument("--allow-smaller", action="store_true", help="accept a task with fewer rows than --n-score")
    p.add_argument("--source", default="auto", choices=["auto", "offline", "hub"],
                   help="data source: auto = hub when online, else the packaged offline copy (default: auto)")
    p.add_argument("--out", default="results/compare", help="output folder (default: results/compare)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from plop_core.comparison import format_summary
    from plop_core.config import (
        EvalConfig,
        FinetuneConfig,
        LoraRecipe,
        SamplingConfig,
        ScorerConfig,
        SweepConfig,
    )
    from plop_core.units import Layout, run_serial

    arms = [a.replace("+", ",") for a in _csv(args.arms)]
    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r} must be comma-separated integers, e.g. 0,1,2") from None
    ft = FinetuneConfig(method=args.method, arms=arms, seeds=seeds, budget_match=not args.no_budget_match,
                        lora=LoraRecipe(r=args.r), train_samples=args.n_train, max_steps=args.max_steps,
                        batch_size=args.batch_size, max_length=args.max_length,
                        num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                        **({"learning_rate": args.lr} if args.lr else {}))
    ev = EvalConfig(metrics=_csv(args.metrics), n_samples=args.n_eval, max_new_tokens=args.max_new_tokens)
    sampling = SamplingConfig(n_samples=args.n_score, max_length=args.max_length, allow_smaller=args.allow_smaller,
                              source=args.source)
    cfg = SweepConfig(name="compare", models=[args.model], tasks=[args.task], sampling=sampling,
                      scorer=ScorerConfig(n_bootstrap=200), selection={"k": args.k}, finetune=ft, evaluation=ev)
    t0 = time.perf_counter()
    man = run_serial(cfg, layout=Layout.flat(args.out), track=False, progress=not args.no_progress)
    if man["failed"]:
        raise RuntimeError("; ".join(f"{f['unit']}: {f['error']}" for f in man["failed"]))
    (exp,) = man["experiments"]
    summary = pd.DataFrame(exp["summary"])
    print(f"\nmodel {args.model}  task {args.task}  method {ft.method}  {ft.train_samples} train rows, "
          f"{ev.n_samples} held-out rows, {ft.max_steps} steps, seeds {seeds}")
    print(f"budget: plop arm at r={ft.lora.r} = {exp['reference_params']:,} trainable parameters; " +
          ("other arms' ranks matched to it" if ft.budget_match else "no budget matching"))
    for m in ev.metrics:
        better = "lower is better" if m == "nll" else "higher is better"
        print(f"\n{m} ({better}; interval: 95% {'t across seeds' if len(seeds) > 1 else 'from the metric'})")
        print(format_summary(summary, m))
    print(f"\nwall {time.perf_counter() - t0:.0f} s; files in {Path(args.out).resolve()}: "
          + ", ".join(sorted(exp["files"])))
    return 0
