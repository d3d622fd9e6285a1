"""Preflight: everything about a sweep that can fail before any work starts, checked at once, in seconds.

Why: a sweep that dies after Prefect and Ray started (or after an hour of scoring) because a model path
has a typo, a task file lost a column, `max_length` exceeds the model's positions or the disk is full
wastes the night. `preflight(cfg)` checks every model (resolves; local folders hold config.json and
intact safetensors; fetched assets match their manifest; hub ids only when online), every task
(resolves, has the split), `max_length` against each model's position limit (read from config.json,
no weights loaded), that the results root is writable (a probe file, removed; a missing root is not
created; an `s3://` root: a probe object written and deleted, and its local staging folder), that MLflow is reachable (SQLite folder writable, or an http server answering /health) and
that the disk has free space. It collects ALL problems and raises one `PreflightError` listing each
with its field and fix, or returns a short report of what it checked.

    from plop_core.preflight import preflight
    report = preflight(cfg)          # raises PreflightError listing every problem
    print(report.summary())

Called by `plop sweep --dry-run`, the serial runner and the flows before any Ray/Prefect work.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from plop_core import storage
from plop_core.config import SweepConfig
from plop_core.errors import explain

MIN_FREE_GB = 1.0  # default floor of free space under the results root; PLOP_MIN_FREE_GB overrides
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class Problem:
    """One thing that would fail: the config field it comes from, and what is wrong and how to fix it."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class PreflightError(ValueError):
    """Every problem preflight found; the message has one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        super().__init__(f"preflight found {n} problem{'s' * (n != 1)} (nothing was started):\n"
                         + "\n".join(f"  - {p}" for p in self.problems))


@dataclass
class PreflightReport:
    """What preflight checked: each model's source and position limit, tasks, root, MLflow URI, free space."""

    models: dict[str, dict] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)
    root: str = ""
    mlflow_uri: str = ""
    free_gb: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"preflight ok: {len(self.models)} model(s), {len(self.tasks)} task(s); root {self.root} "
                 f"({self.free_gb:.1f} GB free); MLflow {self.mlflow_uri}"]
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def position_limit(folder: str | Path) -> int | None:
    """The model's maximum sequence length from its config.json (text config for multimodal), or None."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for c in (cfg, cfg.get("text_config") or {}):
        for k in POSITION_KEYS:
            v = c.get(k)
            if isinstance(v, int) and v > 0:
                return v
    return None


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe_writable(folder: Path) -> str | None:
    """None if a file can be created and removed in `folder` (the nearest existing one), else the reason."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".plop-preflight-")
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        return explain(e)
    return None


def _mlflow_uri(cfg: SweepConfig, root: Path) -> str:
    # same precedence as tracking.resolve_tracking_uri, without creating the root
    return cfg.outputs.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / 'mlflow.db'}"


def _check_mlflow(uri: str, timeout: float) -> str | None:
    if uri.startswith("sqlite:"):
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if path is None or not path.is_absolute():
            return f"{uri!r}: use an absolute SQLite path, sqlite:////abs/path/mlflow.db"
        if path.exists():
            if os.access(path, os.W_OK):
                return None
            if os.statvfs(path).f_flag & os.ST_RDONLY:
                return f"SQLite file {path} is on a read-only file system; use a writable outputs.root or mlflow_uri"
            return f"SQLite file {path} is not writable; fix its permissions"
        why = _probe_writable(_existing_ancestor(path.parent))
        return f"cannot create the SQLite store {path}: {why}" if why else None
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status == 200:
                    return None
                return f"MLflow server {uri} answered /health with HTTP {r.status}; check the server"
        except Exception as e:  # refused, timeout, DNS
            reason = getattr(e, "reason", e)
            return (f"MLflow server {uri} is not reachable ({reason}); start it (mlflow server --host 127.0.0.1) "
                    "or unset MLFLOW_TRACKING_URI / outputs.mlflow_uri to use SQLite under the root")
    if uri.startswith("file:") or "://" not in uri:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
            return (f"{uri!r} is an MLflow file store, which MLflow refuses by default; use "
                    "sqlite:////abs/path/mlflow.db (or set MLFLOW_ALLOW_FILE_STORE=true)")
    return None  # other schemes (databricks, postgresql, ...) are not probed


def check_model(spec, lengths: dict[str, int], where: str = "model") -> tuple[dict, list[Problem]]:
    """Resolve one model without loading or fetching it, and check each `lengths` value (field -> tokens)
    against its position limit: (facts, problems)."""
    from plop_core.models import _hub_snapshot, resolve

    try:
        source, mid, folder = resolve(spec, progress=False, fetch=False)
    except Exception as e:  # noqa: BLE001 -- each problem is collected, not raised
        return {}, [Problem(where, explain(e))]
    if source == "hub":  # resolve already refused a hub id that is offline and not cached
        folder = _hub_snapshot(mid, spec.revision)
    limit = position_limit(folder) if folder is not None else None
    facts = {"source": source, "id": mid, "path": str(folder) if folder else None, "position_limit": limit}
    problems = [Problem(key, f"{n} exceeds the {limit} positions of {where} ({mid}); set {key} <= {limit}")
                for key, n in lengths.items() if limit is not None and n > limit]
    return facts, problems


def check_output_folder(path: str | Path, field: str, min_free_gb: float | None = None) -> tuple[float, list[Problem]]:
    """Can results be written under `path` (created later if missing)? Probes the nearest existing folder
    with a file it removes at once, and checks free space: (free GB, problems)."""
    if min_free_gb is None:
        min_free_gb = float(os.environ.get("PLOP_MIN_FREE_GB", MIN_FREE_GB))
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        return 0.0, [Problem(field, f"{path} is a file, not a folder; choose another {field}")]
    here = _existing_ancestor(path)
    problems = []
    why = _probe_writable(here)
    if why:
        problems.append(Problem(field, f"{path} is not writable: {why}"))
    free = shutil.disk_usage(here).free / 1e9
    if free < min_free_gb:
        problems.append(Problem(field, f"only {free:.2f} GB free under {here} (need {min_free_gb:g} GB); "
                                       f"free space or choose another {field}"))
    return free, problems


def _check_models(cfg: SweepConfig, report: PreflightReport, problems: list[Problem]) -> None:
    lengths = {"sampling.max_length": cfg.sampling.max_length}
    if cfg.finetune.method != "none":
        lengths["finetune.max_length"] = cfg.finetune.max_length
    for i, spec in enumerate(cfg.models):
        facts, found = check_model(spec, lengths, f"models[{i}]")
        problems.extend(found)
        if facts:
            report.models[spec.label] = facts
            if facts["path"] is None:
                report.notes.append(f"models[{i}] ({facts['id']}): not fetched/cached yet; fetched on first use, "
                                    "so its position limit is checked then")


def _check_tasks(cfg: SweepConfig, report: PreflightReport, problems: list[Problem]) -> None:
    from plop_core.data import resolve_task

    for i, task in enumerate(cfg.tasks):
        try:
            spec = resolve_task(task)
            splits = spec.splits(cfg.sampling.source)
        except Exception as e:  # noqa: BLE001
            problems.append(Problem(f"tasks[{i}]", explain(e)))
            continue
        if cfg.sampling.split not in splits:
            problems.append(Problem("sampling.split", f"task {task!r} has no split {cfg.sampling.split!r}; "
                                                      f"use one of {', '.join(splits)}"))
        report.tasks.append(spec.name)


def check(cfg: SweepConfig, *, min_free_gb: float | None = None, mlflow_timeout: float = 3.0
          ) -> tuple[PreflightReport, list[Problem]]:
    """Run every check and return (report, problems) without raising; see `preflight`."""
    root = storage.local_dir(cfg.outputs.root)  # an s3:// root: its local staging folder, where writers write
    report = PreflightReport(root=str(root))
    report.free_gb, problems = check_output_folder(root, "outputs.root", min_free_gb)
    if storage.is_remote(cfg.outputs.root):  # the bucket: a tiny object written and deleted
        report.root = cfg.outputs.root
        why = storage.Store(cfg.outputs.root).probe()
        if why:
            problems.append(Problem("outputs.root", why))
    report.mlflow_uri = uri = _mlflow_uri(cfg, root)
    why = _check_mlflow(uri, mlflow_timeout)
    if why:
        problems.append(Problem("outputs.mlflow_uri", why))
    _check_models(cfg, report, problems)
    _check_tasks(cfg, report, problems)
    return report, problems


def preflight(cfg: SweepConfig, *, min_free_gb: float | None = None, mlflow_timeout: float = 3.0) -> PreflightReport:
    """Check everything knowable before a sweep starts; raise PreflightError listing every problem.
    Loads no weights and creates nothing (the root's probe file is removed; a missing root is not made)."""
    report, problems = check(cfg, min_free_gb=min_free_gb, mlflow_timeout=mlflow_timeout)
    if problems:
        raise PreflightError(problems)
    return report
