"""Where a unit's files go: two layouts of the same files, chosen by who runs the units.

- `hive` (sweeps): a Parquet dataset partitioned by model and task, readable by pyarrow, pandas and
  DuckDB without plop:   <root>/<table>/model=<model>/task=<task>/<key>.parquet
  and each unit's other files (PNG, JSON, adapters) in  <root>/<section>/model=<m>/task=<t>/<key>/.
- `flat` (`plop score --out DIR`, `plop compare --out DIR`): one folder a person opens:
  DIR/<table>.parquet, DIR/placement.json, DIR/nfn_heatmap.png, DIR/runs/<arm>_seed<s>/ ...

Every path a record stores is relative to the root, and `resolve` refuses one that leaves it: a
record in a shared results root cannot point a reader at files elsewhere.

A hive root may be an object store (`s3://bucket/prefix`, see `plop_core.storage`): paths are then
local paths in the root's staging folder (`base`), `publish` uploads written files, `resolve` fetches
what a reader asks for, and `exists` / `read_text` / `readable` ask the store, never the staging copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from plop_core import storage
from plop_core.artifacts import safe_label


class Layout(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hive", "flat"]
    root: str

    @classmethod
    def hive(cls, root: str | Path) -> Layout:
        """A local folder (made absolute) or `s3://bucket/prefix`."""
        if storage.is_remote(root):
            return cls(kind="hive", root=storage.check_root(str(root)))
        return cls(kind="hive", root=str(Path(root).expanduser().resolve()))

    @classmethod
    def flat(cls, root: str | Path) -> Layout:
        if storage.is_remote(root):
            raise ValueError(f"{root}: --out must be a local folder (an object store is for a sweep's outputs.root)")
        return cls(kind="flat", root=str(Path(root).expanduser().resolve()))

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.root)

    @property
    def base(self) -> Path:
        """The local folder files are written to: the root, or a remote root's staging folder."""
        return storage.local_dir(self.root)

    def store(self) -> storage.Store | None:
        return storage.Store(self.root) if self.remote else None

    def table_path(self, table: str, model: str, task: str, key: str) -> Path:
        """The one Parquet file of `table` for a unit."""
        if self.kind == "flat":
            return self.base / f"{table}.parquet"
        return (self.base / table / f"model={safe_label(model)}" / f"task={safe_label(task)}"
                / f"{safe_label(key)}.parquet")

    def shard_path(self, model: str, task: str, key: str, index: int, n_shards: int) -> Path:
        """The `sequences` Parquet file of a cell's shard (hive: like any table, keyed by the shard's key)."""
        if self.kind == "flat":
            return self.base / "sequences" / f"shard-{index}-of-{n_shards}.parquet"
        return self.table_path("sequences", model, task, key)

    def unit_dir(self, section: str, model: str, task: str, key: str) -> Path:
        """Folder of a unit's non-tabular files; `section` is `cells` or `finetune`."""
        if self.kind == "flat":
            return self.base
        return self.base / section / f"model={safe_label(model)}" / f"task={safe_label(task)}" / safe_label(key)

    def sample_path(self, task_name: str, sample_hash: str) -> Path:
        if self.kind == "flat":
            return self.base / "sample.parquet"
        return self.base / "samples" / f"task={safe_label(task_name)}" / f"{safe_label(sample_hash)}.parquet"

    def sweep_dir(self, name: str) -> Path:
        return self.base if self.kind == "flat" else self.base / "sweeps" / safe_label(name)

    def rel(self, path: str | Path) -> str:
        """`path` (inside the root) as the relative string records store."""
        return Path(path).resolve().relative_to(self.base).as_posix()

    def inside(self, rel: str) -> Path:
        """A stored relative path back to its (local) path, refusing anything that leaves the root."""
        base = self.base
        p = (base / rel).resolve()
        if Path(rel).is_absolute() or not p.is_relative_to(base):
            raise ValueError(f"results path {rel!r} leaves the results root {self.root}; the record is not "
                             "plop's (delete it to recompute the unit)")
        return p

    def resolve(self, rel: str) -> Path:
        """`inside`, and for a remote root the file (or folder) fetched into the staging folder first."""
        p = self.inside(rel)
        if self.remote:
            self.store().fetch(p)
        return p

    # ---- what differs for a remote root: the store, not the staging folder, is the truth

    def publish(self, *paths: str | Path) -> None:
        """Upload written files (or folders) to a remote root, in order; nothing to do for a local root."""
        if self.remote:
            st = self.store()
            for p in paths:
                st.put(p)

    def exists(self, path: str | Path) -> bool:
        return self.store().exists(path) if self.remote else Path(path).exists()

    def read_text(self, path: str | Path) -> str:
        return self.store().read_bytes(path).decode() if self.remote else Path(path).read_text()

    def readable(self, path: str | Path) -> bool:
        """The file exists and loads (Parquet footer, JSON) where readers read it."""
        return self.store().readable(path) if self.remote else storage.readable_local(Path(path))
