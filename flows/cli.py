"""`plop`: the console script. The library's commands (plop_core.cli) plus `plop sweep`, which runs a
sweep config as a Prefect flow on Ray, or (`--serial`) unit by unit in this process with no Prefect/Ray.

Usage:
    plop sweep deploy/sweeps/quickstart.yaml
    plop sweep my-sweep.yaml --set sampling.n_samples=64 --set outputs.root=results/mine
    plop sweep my-sweep.yaml --dry-run          # validate, preflight, print the resolved config; run nothing
    plop sweep my-sweep.yaml --serial           # the same units, one after another, no Prefect or Ray

Embedded by default: a local Prefect server for the duration of the run, local Ray with this machine's
CPUs, MLflow in a SQLite file and Parquet under outputs.root. Export PREFECT_API_URL, RAY_ADDRESS or
MLFLOW_TRACKING_URI to use your servers/cluster instead. It lives here, not in plop_core, because it
imports the flows; the library never does.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a sweep config as a Prefect flow on Ray (see deploy/sweeps/)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="sweep YAML (e.g. deploy/sweeps/quickstart.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set sampling.n_samples=64 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config only")
    p.add_argument("--serial", action="store_true",
                   help="run the units one after another in this process (no Prefect server, no Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plop_core.config import load_sweep_config
    from plop_core.errors import sigterm_as_interrupt
    from plop_core.preflight import preflight

    cfg = load_sweep_config(args.config, args.overrides)
    report = preflight(cfg)  # every problem at once, before Prefect/Ray start or anything is written
    if args.dry_run:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        print(report.summary(), file=sys.stderr)  # stdout stays pure JSON for tools
        return 0
    with sigterm_as_interrupt():  # SIGTERM ends runs as Ctrl-C does (KILLED / Crashed), never RUNNING
        man = _run(cfg, args)
    print_where_to_look(man)
    return 0


def _run(cfg, args) -> dict:
    if args.serial:
        from plop_core.units import run_serial
        from plop_core.units.report import units_failed

        man = run_serial(cfg)
        print(man["markdown"])
        man["prefect_mode"] = "none"
        if units_failed(man):
            raise units_failed(man)  # failed-with-partial-results, as the flow ends
    else:
        from flows import run_sweep

        man = run_sweep(cfg, num_cpus=args.num_cpus)
        print(man["markdown"])  # the flow logs it too; the user of `plop sweep` reads it here
    return man


def print_where_to_look(man: dict) -> None:
    from plop_core.tracking import ui_command
    from plop_core.units.report import shown

    root = shown(man["root"])
    print("\nWhere to look:")
    print(f"  Parquet dataset : {root}  (e.g. duckdb -c \"select * from "
          f"read_parquet('{root}/types/**/*.parquet', hive_partitioning=true)\")")
    print(f"  summary         : {shown(man['summary'])}")
    print(f"  MLflow UI       : {ui_command(man['mlflow_uri'])}")
    if man.get("prefect_mode") == "embedded":
        print("  Prefect UI      : prefect server start   (same PREFECT_HOME; the runs are kept in its database)")
    elif man.get("prefect_mode") == "server":
        print(f"  Prefect UI      : {man.get('prefect_api_url', '').removesuffix('/api')}")


def main(argv: list[str] | None = None) -> int:
    from plop_core.cli import main as library_main

    return library_main(argv, extra=[register])


if __name__ == "__main__":
    sys.exit(main())
