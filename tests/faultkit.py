"""Helpers of the fault-injection tests (tests/test_faults.py, tests/test_resume.py): a tiny sweep on
disk, `plop sweep` in a subprocess, the processes of a run, the records of a results root, a tmpfs.

Everything here is real: sweeps run the `plop` console script's code in fresh interpreters, faults are
signals, mounts and resource limits, and results are read back from the files and stores they wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


def _wider_llama(path: Path) -> Path:
    """A 4-layer, 256-wide Llama: still small, but each cell takes seconds, so a kill lands mid-sweep."""
    import torch
    import transformers as T

    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = T.LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=4, max_position_embeddings=256, vocab_size=512,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_sweep(d: Path, name: str, n_tasks: int = 2, root: Path | None = None, wider: bool = False,
               **extra) -> Path:
    """A sweep YAML over one tiny saved Llama (`wider`: 4 layers x 256) and `n_tasks` small JSONL tasks."""
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "tiny-llama" / "config.json").exists():
        _wider_llama(d / "tiny-llama") if wider else save_tiny("llama", d / "tiny-llama", seed=0)
    tasks = []
    for i in range(n_tasks):
        rows = [{"question": f"Task {i}: {j} plus {i + j} is how much?", "answer": str(i + 2 * j)} for j in range(24)]
        path = d / f"t{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tasks.append(str(path))
    cfg = {"name": name, "models": [{"id": str(d / "tiny-llama"), "name": "tiny"}], "tasks": tasks,
           "sampling": {"n_samples": 8, "max_length": 32},
           "scorer": {"n_probe": 16, "n_bootstrap": 20, "batch_size": 4},
           "outputs": {"root": str(root or d / "results"), "experiment": name},
           "resources": {"cpus_per_cell": 1}}
    for key, value in extra.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def plop_env(**extra) -> dict:
    """The environment of a `plop` subprocess: this one's, minus debugging and server overrides unless given."""
    env = {k: v for k, v in os.environ.items() if k not in ("PLOP_DEBUG", "MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(ROOT), PLOP_MIN_FREE_GB="0.001")
    env.update({k: str(v) for k, v in extra.items() if v is not None})
    for k in [k for k, v in extra.items() if v is None]:
        env.pop(k, None)
    return env


def plop(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 900, **popen):
    """Run `python -m flows.cli ARGS` (the `plop` script) to completion."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], env=env or plop_env(),
                          cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, **popen)


def plop_popen(*args: str, env: dict | None = None, log: Path, **popen) -> subprocess.Popen:
    """Start `plop ARGS` in the background, stdout+stderr to `log`."""
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, args)], env=env or plop_env(), cwd=ROOT,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, **popen)


def processes(*needles: str) -> dict[int, str]:
    """Live processes (not zombies) whose command line contains every needle: {pid: command line}."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and all(n in cmd for n in needles):
            found[int(entry)] = cmd
    return found


def wait_until(pred, timeout: float, step: float = 0.25):
    """Poll `pred()` until it returns something truthy (returned) or `timeout` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    return None


def records(root: Path) -> dict[str, dict]:
    """Every unit record under a hive results root: {record path relative to root: parsed JSON}."""
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(Path(root).rglob("record.json"))}


def temp_files(root: Path) -> list[str]:
    """Leftover temp files/folders of atomic writes (`.NAME.*.tmp*`) under `root`."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob(".*") if ".tmp" in p.name)


def assert_every_record_done(root: Path) -> int:
    """Every record under `root` is a finished unit by the done-rule (its files listed and readable, inside
    the root) and every scored cell has exactly one Parquet file per table; returns the number of cells."""
    from plop_core.units import Layout
    from plop_core.units.records import CellResult

    lay = Layout.hive(root)
    cells = [CellResult.model_validate_json((Path(root) / rel).read_text())
             for rel in records(root) if rel.startswith("cells/")]
    for c in cells:
        assert all(lay.readable(lay.resolve(f)) for f in c.files.values()), c.files
        for table in ("modules", "types", "placements"):
            found = list((Path(root) / table).rglob(f"{c.key}.parquet"))
            assert len(found) == 1, (table, c.key, found)
    return len(cells)


@contextlib.contextmanager
def tmpfs(path: Path, size: str, options: str = ""):
    """Mount a tmpfs of `size` at `path` for the block (needs root and CAP_SYS_ADMIN: the tests skip without)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True, capture_output=True)
