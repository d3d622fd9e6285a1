"""`plop`: the command line. Each subcommand lives in its own small module with `register(subparsers)`.

Usage:
    plop score --model smollm2-135m-instruct --data gsm8k --n-samples 128 --out results/score
    plop assets list | fetch NAME... | path NAME
    plop tasks list | show NAME
    plop compare --model smollm2-135m-instruct --task gsm8k --arms plop,attn,mlp,all
    plop sweep deploy/sweeps/quickstart.yaml [--set key=value ...]
    plop config docs > docs/config.md

The library (`plop_core`) never imports Prefect or Ray; only `plop sweep` reaches into `flows/`, lazily.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from plop_core.env import setup_offline_env

SUBCOMMANDS = ("score", "assets", "tasks", "compare", "sweep", "config")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plop",
        description="PLoP: decide where LoRA adapters go (NFN scores), prove it (finetune + evaluate), at scale.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `plop COMMAND --help` for each command's flags.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f"plop_core.cli.{name}")
        except ModuleNotFoundError as e:  # a subcommand not built yet in this checkout
            if e.name != f"plop_core.cli.{name}":
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "no_progress", False):  # also silence the libraries' own bars (weights, datasets)
        import os

        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from pydantic import ValidationError

    try:
        return int(args.func(args) or 0)
    except ValidationError as e:  # a flag that the shared config schema rejects
        for err in e.errors():
            flag = "--" + "-".join(str(x) for x in err["loc"]).replace("_", "-")
            print(f"plop {args.command}: error: {flag} {err.get('input')!r}: {err['msg']}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"plop {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
