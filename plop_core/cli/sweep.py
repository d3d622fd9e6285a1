"""`plop sweep`: run a sweep config (scoring, or scoring + finetuning + evaluation) as a Prefect flow on Ray.

Usage:
    plop sweep deploy/sweeps/quickstart.yaml
    plop sweep my-sweep.yaml --set sampling.n_samples=64 --set outputs.root=results/mine
    plop sweep my-sweep.yaml --dry-run          # validate, preflight, print the resolved config; run nothing

Embedded by default: a local Prefect server for the duration of the run, local Ray with this machine's
CPUs, MLflow in a SQLite file and Parquet under outputs.root. Export PREFECT_API_URL, RAY_ADDRESS or
MLFLOW_TRACKING_URI to use your servers/cluster instead. This is the only plop_core module that reaches
into `flows/` (lazily, inside `run`).
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
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from plop_core.config import load_sweep_config
    from plop_core.preflight import preflight

    cfg = load_sweep_config(args.config, args.overrides)
    report = preflight(cfg)  # every problem at once, before Prefect/Ray start or anything is written
    if args.dry_run:
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        print(report.summary(), file=sys.stderr)  # stdout stays pure JSON for tools
        return 0
    from flows import run_sweep  # lazy: plop_core itself never imports Prefect or Ray

    man = run_sweep(cfg, num_cpus=args.num_cpus)
    print_where_to_look(man)
    return 0


def print_where_to_look(man: dict) -> None:
    from plop_core.tracking import ui_command

    print("\nWhere to look:")
    print(f"  Parquet dataset : {man['root']}  (e.g. duckdb -c \"select * from "
          f"read_parquet('{man['root']}/types/**/*.parquet', hive_partitioning=true)\")")
    print(f"  summary         : {man.get('summary_dir', man['root'])}/summary.md")
    print(f"  MLflow UI       : {ui_command(man['mlflow_uri'])}")
    if man.get("prefect_mode") == "embedded":
        print("  Prefect UI      : prefect server start   (same PREFECT_HOME; the runs are kept in its database)")
    else:
        print(f"  Prefect UI      : {man.get('prefect_api_url', '').removesuffix('/api')}")
