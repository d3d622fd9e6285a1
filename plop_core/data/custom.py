"""User data as tasks: `local_task` (a .jsonl/.json/.csv/.parquet file with a column mapping),
`hub_task` (any hub dataset id, online only), and `resolve_task` (a task name, a file or a hub id).

Why: PLoP scores should be computable on the user's own data. A file either has one text column
(scoring only) or a prompt column and an answer column (scoring, SFT, GRPO, evaluation). Columns are
detected when they have the usual names; a mapping that names missing columns is an error that lists
the columns the file does have. Rows get stable ids (an id column, else the row number) and
`train`/`eval` are carved 80/20 by a hash of the id, as for packaged test-only sets.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from plop_core.data.registry import TaskSpec, UnknownTaskError, get_task, list_tasks
from plop_core.data.sources import (
    LOCAL_SUFFIXES,
    DataSourceError,
    HubSource,
    hub_is_offline,
    offline_hub_message,
    read_local_rows,
)

PAIR_GUESSES = (("prompt", "completion"), ("prompt", "response"), ("question", "answer"),
                ("instruction", "output"), ("input", "output"), ("input", "target"))
_SPLIT_NOTE = ("A single file is split `all`; `train`/`eval` are carved from it 80/20 by a hash of the row id "
               "(the id column, else the row number), so they are disjoint and stable.")


class ColumnError(DataSourceError):
    """A column mapping that does not fit the data; the message lists the columns found."""


def _columns_of(rows: list[dict]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows[:1000]:
        cols.update(dict.fromkeys(r))
    return list(cols)


def choose_columns(found: list[str], where: str, text_column: str | None = None, prompt_column: str | None = None,
                   answer_column: str | None = None, id_column: str | None = None,
                   category_column: str | None = None) -> dict[str, str | None]:
    """Validate an explicit mapping or detect one; raise `ColumnError` naming missing and found columns."""
    given = {"text_column": text_column, "prompt_column": prompt_column, "answer_column": answer_column,
             "id_column": id_column, "category_column": category_column}
    missing = {k: v for k, v in given.items() if v is not None and v not in found}
    if missing:
        names = ", ".join(f"{k}={v!r}" for k, v in missing.items())
        raise ColumnError(f"{where}: missing column(s) {names}; columns found: {found}. "
                          "Pass the right names (e.g. text_column=..., prompt_column=..., answer_column=...)")
    if (prompt_column is None) != (answer_column is None):
        raise ColumnError(f"{where}: give both prompt_column and answer_column (or only text_column); "
                          f"columns found: {found}")
    if text_column is None and prompt_column is None:
        if "text" in found:
            text_column = "text"
        else:
            pair = next(((p, a) for p, a in PAIR_GUESSES if p in found and a in found), None)
            if pair is None:
                raise ColumnError(f"{where}: cannot tell which column holds the text; columns found: {found}. "
                                  "Pass text_column=... (scoring only) or prompt_column=... and answer_column=...")
            prompt_column, answer_column = pair
    if id_column is None and "id" in found:
        id_column = "id"
    return {"text_column": text_column, "prompt_column": prompt_column, "answer_column": answer_column,
            "id_column": id_column, "category_column": category_column}


def _normalize_rows(rows: list[dict], cols: dict[str, str | None], where: str) -> list[dict]:
    out = []
    used = [c for k, c in cols.items() if c and k != "id_column" and k != "category_column"]
    for i, r in enumerate(rows):
        empty = [c for c in used if r.get(c) is None]
        if empty:
            raise ColumnError(f"{where}: row {i + 1} has no value in column(s) {empty}; fill or drop that row")
        row = dict(r)
        row["id"] = str(r[cols["id_column"]]) if cols["id_column"] else str(i)
        out.append(row)
    return out


def _spec_from_columns(name: str, description: str, cols: dict[str, Any], metric: str | None, **kw: Any) -> TaskSpec:
    text_c, prompt_c, answer_c = cols["text_column"], cols["prompt_column"], cols["answer_column"]

    def no_pair(row: dict) -> str:
        raise ValueError(f"task {name!r} has only a text column ({text_c!r}); SFT/GRPO/evaluation need "
                         "prompt_column=... and answer_column=...")

    return TaskSpec(
        name=name, family=kw.pop("family", "local"), description=description,
        metric=metric or ("nll" if prompt_c is None else "exact_match"),
        prompt_fn=(lambda r: str(r[prompt_c])) if prompt_c else no_pair,
        response_fn=(lambda r: str(r[answer_c])) if answer_c else no_pair,
        reference_fn=(lambda r: r[answer_c]) if answer_c else no_pair,
        text_fn=(lambda r: str(r[text_c])) if text_c else None,
        category_column=cols["category_column"], split_note=_SPLIT_NOTE, **kw,
    )


def local_task(path: str | Path, text_column: str | None = None, prompt_column: str | None = None,
               answer_column: str | None = None, id_column: str | None = None, category_column: str | None = None,
               name: str | None = None, metric: str | None = None) -> TaskSpec:
    """A `TaskSpec` over a local .jsonl/.json/.csv/.parquet file (read now, so column errors show at once)."""
    path = Path(path).expanduser().resolve()
    rows = read_local_rows(path)
    if not rows:
        raise DataSourceError(f"{path.name} has no rows; give a file with at least one record")
    cols = choose_columns(_columns_of(rows), path.name, text_column, prompt_column, answer_column,
                          id_column, category_column)
    rows = _normalize_rows(rows, cols, path.name)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    task_name = name or re.sub(r"[^a-z0-9_.-]+", "_", path.stem.lower()) or "local"
    mapping = ", ".join(f"{k}={v}" for k, v in cols.items() if v)
    return _spec_from_columns(
        task_name, f"local file {path.name} ({mapping})", cols, metric,
        local=lambda: {"all": rows}, carve_from={"local": "all"}, split_salt="local",
        source_detail={"path": str(path), "file_sha256": digest, "columns": mapping},
    )


def hub_task(hub_id: str, config: str | None = None, splits: tuple[str, ...] = ("train", "test"),
             text_column: str | None = None, prompt_column: str | None = None, answer_column: str | None = None,
             id_column: str | None = None, category_column: str | None = None, metric: str | None = None) -> TaskSpec:
    """A `TaskSpec` over any hub dataset (needs the hub; offline raises a message naming the alternatives)."""
    if hub_is_offline():
        raise DataSourceError(offline_hub_message(hub_id))
    from datasets import load_dataset_builder

    found = list(load_dataset_builder(hub_id, config).info.features or {})
    cols = choose_columns(found, hub_id, text_column, prompt_column, answer_column, id_column, category_column)

    def norm(row: dict, cfg: str | None, split: str, i: int) -> dict:
        return dict(row, id=str(row[cols["id_column"]]) if cols["id_column"] else f"{split}-{i}")

    carve = {"hub": splits[0]} if len(splits) == 1 else {}
    split_map = {"hub": {"eval": splits[-1]}} if len(splits) > 1 and "eval" not in splits else {}
    return _spec_from_columns(
        hub_id.replace("/", "__").lower(), f"hub dataset {hub_id}" + (f" ({config})" if config else ""), cols, metric,
        family="hub", hub=HubSource(hub_id, (config,), splits, norm), carve_from=carve, split_map=split_map,
    )


def resolve_task(data: str | Path | TaskSpec, **columns: Any) -> TaskSpec:
    """A registered task name, a local data file (with optional column mapping), or a hub dataset id."""
    if isinstance(data, TaskSpec):
        return data
    text = str(data)
    if text in list_tasks():
        if any(v is not None for v in columns.values()):
            raise ValueError(f"column options {sorted(k for k, v in columns.items() if v is not None)} apply to "
                             f"local files and hub ids, not to the registered task {text!r}")
        return get_task(text)
    path = Path(text).expanduser()
    if path.exists() or path.suffix.lower() in LOCAL_SUFFIXES:
        return local_task(path, **columns)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        if hub_is_offline():
            raise DataSourceError(offline_hub_message(text) + f". Packaged offline tasks: {', '.join(list_tasks())}")
        return hub_task(text, **columns)
    raise UnknownTaskError(f"unknown task {text!r}; known tasks: {', '.join(list_tasks())}. "
                           "A local .jsonl/.csv/.parquet file or (online) a hub dataset id also works")
