"""Does GRPO have a reward signal on this model and task? Base-model answers per problem category.

GRPO learns only from prompt groups whose completions get different rewards (TRL logs the share that do
not as `frac_reward_zero_std`). Before spending hours of CPU on `study-grpo`, this measures, per (digits,
op) category of held-out problems and per prompt style (the paper's <think>/<answer> instruction, or the
plain question):
- greedy exact match (what `evaluate` reports for the base model), and
- with `--groups G`, G completions per problem sampled at temperature 1 (as GRPO samples): the share of
  problems whose G samples are not all equally rewarded (1 - frac_reward_zero_std).

Usage (repo root; the model from the offline assets; ~3 min on 2 CPU cores for the defaults):
    .venv/bin/python benchmarks/study/grpo_signal.py
    .venv/bin/python benchmarks/study/grpo_signal.py --task arithmetic_small --per-category 8 --groups 4
Writes docs/study/tables/grpo_signal_<task>.md (a row per prompt style and category; docs/study.md
includes it) unless --no-write.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402
from common import write_table  # noqa: E402

from plop_core.config import FinetuneConfig  # noqa: E402
from plop_core.data import load_rows  # noqa: E402
from plop_core.evaluate import generate_greedy, generate_sampled, score_exact_match  # noqa: E402
from plop_core.models import load_model  # noqa: E402
from plop_core.train.common import render_prompt  # noqa: E402
from plop_core.train.grpo import with_instruction  # noqa: E402


def sampled_groups(model, tok, prompts: list[str], answers: list, group: int, max_new: int, seed: int) -> list[int]:
    """Per prompt: how many of `group` temperature-1 samples are correct (GRPO's sampling, TRL defaults)."""
    torch.manual_seed(seed)
    groups = generate_sampled(model, tok, prompts, group, max_new, batch_size=8)
    return [int(sum(score_exact_match(texts, [ans] * group))) for texts, ans in zip(groups, answers, strict=True)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--per-category", type=int, default=6, help="held-out problems per (digits, op) category")
    ap.add_argument("--groups", type=int, default=0, help="samples per problem at temperature 1 (0: greedy only)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    lm = load_model(args.model, progress=False)
    model, tok = lm.model, lm.tokenizer
    by_cat = collections.defaultdict(list)
    for r in load_rows(args.task, "eval"):
        by_cat[r["category"]].append(r)
    rows = [r for c in sorted(by_cat) for r in by_cat[c][: args.per_category]]
    instruction = FinetuneConfig(method="grpo").grpo_system_prompt
    table = []
    for style, ins in (("instruction", instruction), ("plain", None)):
        t0 = time.time()
        prompts = [render_prompt(tok, with_instruction(tok, [{"role": "user", "content": r["question"]}], ins))
                   for r in rows]
        gens = generate_greedy(model, tok, prompts, args.max_new_tokens, 8)
        hits = (sampled_groups(model, tok, prompts, [r["answer"] for r in rows], args.groups, args.max_new_tokens, 0)
                if args.groups else [0] * len(rows))
        cats: dict[str, dict] = {}
        greedy = score_exact_match(gens, [r["answer"] for r in rows])  # evaluate's own exact-match rule
        for r, g, ok, h in zip(rows, gens, greedy, hits, strict=True):
            c = cats.setdefault(r["category"], {"style": style, "category": r["category"], "problems": 0,
                                                "greedy_correct": 0, "answer_tag": 0, "groups_with_variance": 0})
            c["problems"] += 1
            c["greedy_correct"] += int(ok)
            c["answer_tag"] += int("<answer>" in g)
            c["groups_with_variance"] += int(0 < h < args.groups)
        table += [cats[c] for c in sorted(cats)]
        print(f"{style}: {time.time() - t0:.0f} s; e.g. {rows[0]['question']!r} -> {gens[0][:120]!r}")
    df = pd.DataFrame(table)
    if not args.groups:
        df = df.drop(columns="groups_with_variance")
    total = df.groupby("style", sort=False).sum(numeric_only=True).reset_index().assign(category="all")
    df = pd.concat([df, total[df.columns]], ignore_index=True)
    print(df.to_string(index=False))
    if not args.no_write:
        cmd = " ".join([".venv/bin/python benchmarks/study/grpo_signal.py", *(argv if argv is not None else sys.argv[1:])])
        note = (f"{args.model} on held-out `{args.task}` problems, {args.per_category} per category, greedy with "
                f"{args.max_new_tokens} new tokens; answer_tag: greedy answers containing `<answer>`"
                + (f"; groups_with_variance: problems whose {args.groups} samples at temperature 1 are not all "
                   "equally correct (GRPO learns only from those)" if args.groups else "") + ".")
        write_table(f"grpo_signal_{args.task}", df, cmd.strip(), note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
