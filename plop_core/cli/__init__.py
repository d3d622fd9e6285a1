"""`plop`: the command line. Each subcommand lives in its own small module with `register(subparsers)`.

Usage:
    plop score --model smollm2-135m-instruct --data gsm8k --n-samples 128 --out results/score
    plop assets list | fetch NAME... | path NAME
    plop tasks list | show NAME
    plop compare --model smollm2-135m-instruct --task gsm8k --arms plop,attn,mlp,all
    plop sweep deploy/sweeps/quickstart.yaml [--set key=value ...]   (registered by flows/cli.py)
    plop config docs > docs/config.md

The library (`plop_core`) never imports Prefect, Ray, `flows` or `tasks`. The `plop` console script is
`flows.cli:main`, which adds `plop sweep` (Prefect + Ray) to these library commands; `python -m
plop_core.cli` runs the library commands alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from plop_core.env import setup_offline_env
from plop_core.errors import debug_enabled, exit_status, explain

SUBCOMMANDS = ("score", "assets", "tasks", "compare", "config")


def build_parser(extra=()) -> argparse.ArgumentParser:
    """The `plop` parser: the library's subcommands, plus `extra` register functions (e.g. `plop sweep`)."""
    parser = argparse.ArgumentParser(
        prog="plop",
        description="PLoP: decide where LoRA adapters go (NFN scores), prove it (finetune + evaluate), at scale.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `plop COMMAND --help` for each command's flags.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"plop_core.cli.{name}").register(sub)
    for register in extra:
        register(sub)
    return parser


def _add_debug_flag(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """`--debug` before the subcommand and after it (on every subparser, nested ones too)."""
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="show the full traceback on errors (also: PLOP_DEBUG=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug_flag(child)


def main(argv: list[str] | None = None, extra=()) -> int:
    """Run one command. The error boundary: any failure prints `plop CMD: error: ...` (problem and fix, see
    `plop_core.errors.explain`) with status 2, or 1 for unexpected errors, 130 on Ctrl-C; --debug re-raises."""
    setup_offline_env()
    parser = build_parser(extra)
    _add_debug_flag(parser, top=True)
    args = parser.parse_args(argv)
    debug = args.debug or debug_enabled()
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if getattr(args, "no_progress", False):  # also silence the libraries' own bars (weights, datasets)
            import os

            os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        return int(args.func(args) or 0)
    except BaseException as e:  # noqa: BLE001 -- the one boundary; SystemExit passes through
        if isinstance(e, SystemExit) or debug:
            raise
        cmd = " ".join(x for x in (args.command, getattr(args, f"{args.command}_command", None)) if x)
        print(f"plop {cmd}: error: {_explain_cli(e)}", file=sys.stderr)
        return exit_status(e)


def _explain_cli(exc: BaseException) -> str:
    """`explain`, with a flag-shaped name for errors of the shared schema raised from command-line flags."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors():
            flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "a flag"
            lines.append(f"{flag} {err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}")
        return "\n".join(lines)
    return explain(exc)


if __name__ == "__main__":
    sys.exit(main())
