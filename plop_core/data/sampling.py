"""Deterministic, stratified samples of a task, their content hash, token statistics and Parquet form.

Why hash-ranking: each row gets the key sha256(seed, task, id) and the sample is the rows with the
smallest keys (per category when stratified, with proportional quotas by largest remainder). This
depends only on the seed and row ids, never on the row order, the platform or global random state, so
the same seed gives the same rows on any machine. The sample hash is sha256 over the canonical JSON of
(task, split, [(id, text), ...]): it names the content, so caches and artifacts can key on it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plop_core.atomic import atomic_path
from plop_core.data.registry import TaskSpec
from plop_core.runtime_info import runtime

PARQUET_META_KEY = b"plop.sample"


def _rank_key(seed: int, task: str, row_id: str) -> str:
    return hashlib.sha256(f"plop-sample\x00{seed}\x00{task}\x00{row_id}".encode()).hexdigest()


def sample_hash(task: str, split: str, ids: list[str], texts: list[str]) -> str:
    """sha256 of the canonical JSON of the task name, split and the chosen (id, text) pairs in order."""
    payload = {"task": task, "split": split, "rows": [[i, t] for i, t in zip(ids, texts)]}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def stratified_quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Proportional quotas summing to n (largest remainder, ties by category name)."""
    total = sum(sizes.values())
    exact = {c: n * s / total for c, s in sizes.items()}
    quotas = {c: int(v) for c, v in exact.items()}
    order = sorted(sizes, key=lambda c: (-(exact[c] - quotas[c]), c))
    for c in order[: n - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


@dataclass
class Sample:
    """Chosen rows of a task split, their scoring texts, the content hash and provenance metadata."""

    rows: list[dict]
    texts: list[str]
    sample_hash: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return [r["id"] for r in self.rows]

    def token_stats(self, tokenizer: Any, max_length: int | None = None) -> dict[str, Any]:
        """Tokens per text (with the tokenizer's special tokens, as the scorer sees them): mean, median,
        p95, min, max, and the share and count of texts longer than `max_length` (truncated by the scorer)."""
        lengths = [len(ids) for ids in tokenizer(self.texts, add_special_tokens=True)["input_ids"]]
        srt = sorted(lengths)
        p95 = srt[min(len(srt) - 1, max(0, int(round(0.95 * len(srt))) - 1))]
        n_trunc = sum(1 for x in lengths if max_length is not None and x > max_length)
        stats = {"n_texts": len(lengths), "mean_tokens": float(statistics.fmean(lengths)),
                 "median_tokens": float(statistics.median(lengths)), "p95_tokens": int(p95),
                 "min_tokens": int(srt[0]), "max_tokens": int(srt[-1]), "max_length": max_length,
                 "n_truncated": n_trunc, "truncated_share": n_trunc / len(lengths),
                 "tokens_total": int(sum(lengths)),
                 "tokens_kept": int(sum(min(x, max_length) if max_length else x for x in lengths))}
        return stats

    def to_parquet(self, path: str | Path) -> Path:
        """Write rows (id, text, category, row_json; sample_hash and the runtime provenance columns) atomically;
        metadata in the schema under b'plop.sample'."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({
            "id": pa.array(self.ids, pa.string()),
            "text": pa.array(self.texts, pa.string()),
            "category": pa.array([r.get("_category") for r in self.rows], pa.string()),
            "row_json": pa.array([json.dumps({k: v for k, v in r.items() if k != "_category"},
                                             sort_keys=True, ensure_ascii=False, default=str)
                                  for r in self.rows], pa.string()),
            "sample_hash": pa.array([self.sample_hash] * len(self.rows), pa.string()),
            # where and with what it was drawn (host, process, orchestrator ids, versions): plop_core.runtime_info
            **{k: pa.array([v] * len(self.rows), pa.int64() if k == "worker_pid" else pa.string())
               for k, v in runtime().items()},
        })
        meta = dict(self.meta, sample_hash=self.sample_hash)
        table = table.replace_schema_metadata({PARQUET_META_KEY: json.dumps(meta, sort_keys=True).encode()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    @classmethod
    def from_parquet(cls, path: str | Path, verify: bool = True) -> Sample:
        """Read a sample written by `to_parquet`; `verify` recomputes the hash and rejects edited files."""
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(PARQUET_META_KEY)
        if raw is None:
            raise ValueError(f"{path} is not a plop sample (no {PARQUET_META_KEY.decode()} metadata); "
                             "write samples with Sample.to_parquet")
        meta = json.loads(raw)
        cols = table.to_pydict()
        rows = [json.loads(s) for s in cols["row_json"]]
        for r, cat in zip(rows, cols["category"]):
            if cat is not None:
                r["_category"] = cat
        digest = meta.pop("sample_hash")
        if verify:
            again = sample_hash(meta["task"], meta["split"], cols["id"], cols["text"])
            if again != digest:
                raise ValueError(f"{path}: content hash {again[:12]} does not match the recorded {digest[:12]}; "
                                 "the file was edited; re-create it with sample_task(...).to_parquet")
        return cls(rows=rows, texts=list(cols["text"]), sample_hash=digest, meta=meta)


def _plop_version() -> str:
    import importlib

    return str(getattr(importlib.import_module("plop_core"), "__version__", "unknown"))


def sample_task(task: str | TaskSpec, n: int, seed: int = 0, split: str = "train", allow_smaller: bool = False,
                stratify: bool = True, source: str = "auto") -> Sample:
    """Draw `n` rows of `task`'s `split` deterministically by `seed` (see module docstring).

    Stratified by the task's category column when it has one. A split smaller than `n` is an error
    unless `allow_smaller=True` (then all rows are taken and `meta["n"]` says how many).
    """
    from plop_core.data.custom import resolve_task

    spec = resolve_task(task)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows = spec.load(split, source)
    if n > len(rows) and not allow_smaller:
        raise ValueError(f"task {spec.name!r} split {split!r} has {len(rows)} rows, fewer than the {n} requested; "
                         f"ask for n <= {len(rows)}, pass allow_smaller=True (sampling.allow_smaller) to take all "
                         f"of them, or choose a larger split (`plop tasks show {spec.name}` lists them)")
    key = {r["id"]: _rank_key(seed, spec.name, r["id"]) for r in rows}
    by_key = sorted(rows, key=lambda r: key[r["id"]])
    cats = [spec.category(r) for r in by_key] if spec.category_column else None
    if stratify and cats is not None and n < len(rows):
        sizes = Counter(cats)
        quotas = stratified_quotas(dict(sizes), n)
        taken: Counter = Counter()
        chosen = []
        for r, c in zip(by_key, cats):
            if taken[c] < quotas[c]:
                taken[c] += 1
                chosen.append(r)
    else:
        chosen = by_key[:n]
    if cats is not None:
        for r in chosen:
            r["_category"] = spec.category(r)
    texts = [spec.text(r) for r in chosen]
    digest = sample_hash(spec.name, split, [r["id"] for r in chosen], texts)
    meta = {"task": spec.name, "split": split, "seed": seed, "n": len(chosen), "n_requested": n,
            "n_split": len(rows), "stratified": bool(stratify and cats is not None),
            "category_column": spec.category_column, "metric": spec.metric,
            "categories": dict(sorted(Counter(r.get("_category") for r in chosen).items())) if cats else {},
            "plop_version": _plop_version(), "split_note": spec.split_note, **spec.describe_source(source)}
    return Sample(rows=chosen, texts=texts, sample_hash=digest, meta=meta)


def load_rows(task: str | TaskSpec, split: str = "train", source: str = "auto") -> list[dict]:
    """All rows of a task split (a task name, a local file path, or a `TaskSpec`)."""
    from plop_core.data.custom import resolve_task

    return resolve_task(task).load(split, source)
