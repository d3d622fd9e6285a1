"""Parquet results: the versioned schema, provenance columns, the dataset layout and atomic writes.

Why: results must be readable years later by pyarrow.dataset, pandas and DuckDB without our code,
and a sweep killed halfway must never leave a half-written file that a resume mistakes for a result.
So every file is one *cell* (model x task, or model x task x finetune arm), written to a temp file in
the same folder and renamed into place, with the provenance of the numbers in columns (and, for tools
that read metadata, in the Parquet key-value metadata under `plop`).

Layout under a results root (hive partitioning by model and task):

    <root>/<table>/model=<model>/task=<task>/<cell_key>.parquet

`table` is one of `TABLES` (modules, parts, types, placements, sequences, training, evaluation). The partition
columns `model` and `task` come from the path only (never stored inside the file, so pandas and
pyarrow can merge them); inside each file the same values are in `model_name` and `task_name`.
The schema is documented in docs/pipeline.md; bump `SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from plop_core.atomic import atomic_path, atomic_write_text  # noqa: F401  (re-exported)
from plop_core.runtime_info import runtime

SCHEMA_VERSION = "1.1"  # 1.1: runtime provenance columns (hostname ... versions)

_STR, _INT, _F64 = pa.string(), pa.int64(), pa.float64()
_STRS = pa.list_(pa.string())

# Data columns per table, in order. Every column is nullable (NaN/None where a value does not apply).
TABLES: dict[str, pa.Schema] = {
    "modules": pa.schema([
        ("module", _STR), ("layer", _INT), ("type", _STR), ("kind", _STR), ("d_in", _INT), ("d_out", _INT),
        ("n_tokens", _INT), ("feature_norm", _F64), ("baseline_norm", _F64), ("baseline_se", _F64),
        ("nfn", _F64), ("nfn_se", _F64),
    ]),
    "parts": pa.schema([
        ("module", _STR), ("part_of", _STR), ("layer", _INT), ("type", _STR), ("kind", _STR), ("d_in", _INT),
        ("d_out", _INT), ("n_tokens", _INT), ("feature_norm", _F64), ("baseline_norm", _F64),
        ("baseline_se", _F64), ("nfn", _F64), ("nfn_se", _F64),
    ]),
    "types": pa.schema([
        ("type", _STR), ("nfn", _F64), ("nfn_ci_low", _F64), ("nfn_ci_high", _F64), ("layer_min", _F64),
        ("layer_max", _F64), ("layer_std", _F64), ("n_layers", _INT),
    ]),
    "placements": pa.schema([
        ("strategy", _STR), ("k", _INT), ("types", _STRS), ("target_modules", _STRS), ("n_modules", _INT),
        ("lora_rank", _INT), ("trainable_params", _INT), ("stability", _F64),
    ]),
    "sequences": pa.schema([  # a shard's per-sequence statistics (plop_core.shards): one row per sequence x unit
        ("shard", _INT), ("n_shards", _INT), ("sequence_index", _INT), ("full_length", _INT), ("unit", _INT),
        ("module", _STR), ("sum_a", _F64), ("count", _F64), ("sum_a_rho", _F64), ("sum_b", _F64), ("sum_b2", _F64),
    ]),
    "training": pa.schema([  # one row per logged optimizer step (TrainResult.curve); TRL's other numbers follow
        ("arm", _STR), ("seed", _INT), ("step", _INT), ("epoch", _F64), ("loss", _F64), ("learning_rate", _F64),
        ("grad_norm", _F64),
    ]),
    "evaluation": pa.schema([
        ("arm", _STR), ("seed", _INT), ("strategy", _STR), ("types", _STRS), ("lora_rank", _INT),
        ("trainable_params", _INT), ("metric", _STR), ("value", _F64), ("ci_low", _F64), ("ci_high", _F64),
        ("n", _INT), ("train_loss_final", _F64), ("train_seconds", _F64),
    ]),
}

PROVENANCE_SCHEMA = pa.schema([
    ("schema_version", _STR), ("table", _STR), ("sweep", _STR), ("cell_key", _STR),
    ("model_name", _STR), ("model_id", _STR), ("model_identity", _STR), ("task_name", _STR),
    ("sample_hash", _STR), ("sample_seed", _INT), ("n_samples", _INT), ("estimator", _STR),
    ("scorer_seed", _INT), ("config_hash", _STR), ("code_version", _STR),
    ("created_at", pa.timestamp("us", tz="UTC")),
    # where and with what (plop_core.runtime_info): host, process, Ray node, Prefect runs, versions (JSON)
    ("hostname", _STR), ("worker_pid", _INT), ("ray_node_id", _STR), ("flow_run_id", _STR), ("task_run_id", _STR),
    ("versions", _STR),
])


@dataclass(frozen=True)
class Provenance:
    """Where a cell's numbers come from; repeated as columns in every row of the cell's files."""

    sweep: str
    cell_key: str
    model_name: str
    model_id: str
    model_identity: str
    task_name: str
    sample_hash: str
    sample_seed: int
    n_samples: int
    estimator: str
    scorer_seed: int
    config_hash: str
    code_version: str = field(default_factory=lambda: code_version())
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    runtime: dict[str, Any] = field(default_factory=runtime)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat()
        d.update(d.pop("runtime"))
        return d


def safe_label(text: str) -> str:
    """A path- and partition-safe label: keeps letters, digits, `.`, `_`, `-`; maps the rest to `_`."""
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not label:
        raise ValueError(f"cannot make a file-safe label from {text!r}; give the model/task a `name`")
    return label


def code_version() -> str:
    """plop's version plus a content hash of the library's source: `0.1.0+src1a2b3c4d5e`.

    A hash of `plop_core/**/*.py` (not the git commit) so that a cache survives commits that only touch
    docs, tests or deployment files, yet is invalidated by any change to the code that computes results,
    committed or not, and works the same for an installed wheel with no git checkout.
    $PLOP_CODE_VERSION overrides it (e.g. to keep caches across a refactor you know changes no number);
    it is read on every call, so setting it after the first key was computed still takes effect.
    """
    return os.environ.get("PLOP_CODE_VERSION") or _source_version()


@functools.lru_cache(maxsize=1)
def _source_version() -> str:
    """The hashed half of `code_version` (cached: the source does not change inside one process)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        __version__ = version("plop")
    except PackageNotFoundError:
        __version__ = "0+unknown"
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{__version__}+src{h.hexdigest()[:10]}"


def cell_path(root: str | Path, table: str, model: str, task: str, cell_key: str) -> Path:
    """The one file of `table` for a cell: `<root>/<table>/model=<model>/task=<task>/<cell_key>.parquet`."""
    _check_table(table)
    return (Path(root) / table / f"model={safe_label(model)}" / f"task={safe_label(task)}"
            / f"{safe_label(cell_key)}.parquet")


# Tables whose columns follow the experiment (one per metric): written with provenance, schema not declared.
UNDECLARED_TABLES = ("summary", "runs")


def _check_table(table: str) -> None:
    if table not in TABLES and table not in UNDECLARED_TABLES:
        raise ValueError(f"unknown results table {table!r}; use one of {sorted(TABLES)}")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(table: Any, path: str | Path, metadata: dict[str, Any] | None = None,
                         compression: str = "zstd") -> Path:
    """Write an Arrow table (or DataFrame) to `path` atomically: readers see the old file or the new one.

    `metadata` (JSON-able) is stored in the Parquet key-value metadata under `plop`.
    """
    path = Path(path)
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata is not None:
        merged = dict(table.schema.metadata or {})
        merged[b"plop"] = json.dumps(metadata, default=str, sort_keys=True).encode()
        table = table.replace_schema_metadata(merged)
    with atomic_path(path, ".parquet.tmp") as tmp:
        pq.write_table(table, tmp, compression=compression)
    return path


def to_arrow(rows: Any, table: str, provenance: Provenance) -> pa.Table:
    """Rows (DataFrame or list of dicts) -> Arrow table with the declared columns, types and provenance.

    Missing declared columns are an error; extra columns are kept after the declared ones.
    """
    import pandas as pd

    _check_table(table)
    schema = TABLES.get(table, pa.schema([]))  # undeclared tables: every column kept as it is
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(
            f"results table {table!r} is missing columns {missing}; the schema (docs/pipeline.md) needs "
            f"{schema.names}. Add them (None/NaN where a value does not apply)."
        )
    clash = [n for n in df.columns if n in PROVENANCE_SCHEMA.names or n in ("model", "task")]
    if clash:
        raise ValueError(f"columns {clash} are reserved for provenance/partitioning; rename them")
    extras = [c for c in df.columns if c not in schema.names]
    arrays, fields = [], []
    for f in schema:
        values = [_plain(v, f.type) for v in df[f.name].tolist()]
        arrays.append(pa.array(values, type=f.type, from_pandas=True))
        fields.append(f)
    for name in extras:
        arr = pa.array(df[name].tolist(), from_pandas=True)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    n = len(df)
    prov = provenance.to_dict()
    prov.update(schema_version=SCHEMA_VERSION, table=table, created_at=provenance.created_at)
    for f in PROVENANCE_SCHEMA:
        arrays.append(pa.array([prov[f.name]] * n, type=f.type))
        fields.append(f)
    meta = {b"plop": json.dumps({"schema_version": SCHEMA_VERSION, "table": table, **provenance.to_dict()}).encode()}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=meta))


def _plain(v: Any, typ: pa.DataType) -> Any:
    """numpy scalars/arrays and tuples -> Python values Arrow accepts for `typ`."""
    if pa.types.is_list(typ):
        if v is None:
            return None
        if isinstance(v, str):
            return [s for s in v.split(",") if s]
        return [str(x) for x in v]
    if hasattr(v, "item"):
        v = v.item()
    if pa.types.is_integer(typ) and isinstance(v, float):
        return None if v != v else int(v)
    return v


def write_cell_table(root: str | Path, table: str, rows: Any, provenance: Provenance) -> Path:
    """Validate `rows` against `table`'s schema, add provenance, and write the cell's file atomically."""
    path = cell_path(root, table, provenance.model_name, provenance.task_name, provenance.cell_key)
    return write_parquet_atomic(to_arrow(rows, table, provenance), path)


def read_provenance(path: str | Path) -> dict[str, Any]:
    """The `plop` key-value metadata of one results file (schema version, table, provenance)."""
    meta = pq.read_schema(path).metadata or {}
    if b"plop" not in meta:
        raise ValueError(f"{path} has no plop metadata; it was not written by plop_core.artifacts")
    return json.loads(meta[b"plop"])


def read_results(root: str | Path, table: str, **equals: Any):
    """Convenience reader (pandas) of one table of a results root, with optional `column=value` filters.

    Plain `pandas.read_parquet(f"{root}/{table}")` or DuckDB work the same; this only adds filters.
    """
    import pyarrow.dataset as ds

    _check_table(table)
    base = Path(root) / table
    if not base.is_dir():
        raise FileNotFoundError(f"no {table!r} results under {root}; run a sweep first (plop sweep CONFIG.yaml)")
    dset = ds.dataset(base, format="parquet", partitioning="hive", exclude_invalid_files=True)
    expr = None
    for k, v in equals.items():
        e = ds.field(k) == v
        expr = e if expr is None else expr & e
    return dset.to_table(filter=expr).to_pandas()
