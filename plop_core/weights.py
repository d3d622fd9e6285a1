"""Digests and integrity of weight files: sha256 of a model folder's safetensors, header checks, and the
check of an offline asset against its manifest.

Why its own module: offline assets (assets.py) record the digest when they are built and models.py checks
it on every load; with the digest code here neither imports the other (no import cycle), and nothing here
imports torch. A flipped byte changes the file's ctime, which keys the cached digest, so a damaged file is
re-hashed and caught (docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from plop_core.atomic import atomic_write_text
from plop_core.env import plop_home


class ChecksumError(RuntimeError):
    """A downloaded or assembled file does not match its pinned sha256 (the file was deleted)."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def _file_key(f: Path) -> list:
    st = f.stat()
    return [f.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def weights_sha256(folder: str | Path, cache: bool = True, known: str | None = None) -> str:
    """sha256 of a model folder's safetensors files: the file's own sha256 when there is one file, else
    the sha256 of the sorted 'name sha256' lines. Cached in PLOP_HOME/hashes by each file's (name, inode,
    size, mtime_ns, ctime_ns): any write to a file changes its ctime, so the digest follows the content.
    `known`: a digest just computed elsewhere (e.g. before a rename); stored without hashing again."""
    folder = Path(folder).resolve()
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"no *.safetensors weight files in {folder}")
    stats = [_file_key(f) for f in files]
    side = plop_home() / "hashes" / (hashlib.sha256(str(folder).encode()).hexdigest()[:24] + ".json")
    if cache and known is None:
        try:
            rec = json.loads(side.read_text())
            if rec["stats"] == stats:
                return rec["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    per = [] if known else [sha256_file(f) for f in files]
    if known:
        digest = known
    elif len(files) == 1:
        digest = per[0]
    else:
        digest = hashlib.sha256("".join(f"{f.name} {h}\n" for f, h in zip(files, per)).encode()).hexdigest()
    if cache:
        atomic_write_text(side, json.dumps({"path": str(folder), "stats": stats, "sha256": digest}))
    return digest


def _repair_hint(folder: Path) -> str:
    name = folder.name if (folder / "plop_asset.json").exists() else None
    if name:
        return (f"check it with `plop assets verify {name}` and rebuild it with `plop assets fetch {name} --force`")
    return "restore the folder from its source, or save the model again with save_pretrained"


def check_safetensors(path: str | Path) -> None:
    """Fail with the file and the repair when a safetensors file is truncated or its header is damaged.
    Reads only the header (8-byte length + JSON), so it costs microseconds, not a load."""
    path = Path(path)
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else -1
        if n < 2 or 8 + n > size:
            problem = f"its header length ({n} bytes) does not fit the file ({size} bytes): truncated or damaged"
        else:
            try:
                header = json.loads(f.read(n))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError):
                problem = "its header is not valid safetensors JSON: damaged"
            else:
                if 8 + n + end != size:
                    problem = (f"its tensors need {8 + n + end} bytes but the file has {size}: "
                               f"{'truncated' if size < 8 + n + end else 'damaged'}")
    if problem:
        raise ChecksumError(f"weights file {path} is unusable: {problem}; {_repair_hint(path.parent)}")


def verify_asset_weights(name: str, folder: str | Path) -> str:
    """The weights digest of a fetched asset, checked against its manifest (cached by content, see
    `weights_sha256`); raises ChecksumError saying how to repair when they differ."""
    folder = Path(folder)
    for f in weight_files(folder):
        check_safetensors(f)
    want = json.loads((folder / "plop_asset.json").read_text()).get("weights_sha256")
    got = weights_sha256(folder)
    if want and got != want:
        raise ChecksumError(f"offline asset {name}: weights sha256 {got[:16]}... differs from its manifest's "
                            f"{want[:16]}... ({folder} was modified or damaged); {_repair_hint(folder)}")
    return got
