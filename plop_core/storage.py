"""Where a results root lives: a local folder, or an object store (`s3://bucket/prefix`).

Why: with an object-store root, workers on different machines share results without a shared disk.
How, without teaching every writer and reader a second file API:

- writers keep writing each file into a local folder, the root's *staging folder*, exactly as they
  write a local root (temp file, then rename);
- `Store.put` uploads a finished file with one object write (a partial upload never becomes an object),
  and the units' writer (`plop_core.units.results`) uploads a unit's files first and its record LAST:
  the record is the commit marker. The done-rule reads the record *from the store* and checks on the
  store that every file it lists exists and loads (Parquet footer, JSON), so a unit whose upload was
  cut off is not done, whatever the staging folder holds;
- readers get a local copy first (`Store.fetch`: downloaded when absent or of another size).

Staging folder of `s3://bucket/prefix`: `$PLOP_STAGE_DIR/s3/bucket/prefix` (default
`<plop home>/stage/s3/bucket/prefix`); it is a cache and may be deleted between runs.
Credentials, region and endpoint come only from the standard AWS environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, AWS_REGION / AWS_DEFAULT_REGION, and
AWS_ENDPOINT_URL for an S3-compatible server such as MinIO); none of it is written anywhere.
Built on `pyarrow.fs.S3FileSystem` (part of the pyarrow wheel), imported only for remote roots.
"""

from __future__ import annotations

import functools
import json
import os
import re
import uuid
from pathlib import Path

SCHEMES = ("s3",)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def is_remote(root: str | Path) -> bool:
    return "://" in str(root)


def check_root(root: str) -> str:
    """A local root as given, or `s3://bucket/prefix` normalized (no trailing '/'); ValueError saying
    what is wrong otherwise (no bucket, an unsupported scheme, '.' or '..' in the prefix)."""
    text = str(root).strip()
    if not is_remote(text):
        return str(root)
    scheme, _, rest = text.partition("://")
    if scheme.lower() not in SCHEMES:
        raise ValueError(f"{text!r}: {scheme}:// is not supported; use a local folder or s3://bucket/prefix")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket; use s3://bucket/prefix")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{text!r}: {bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    parts = [p for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{text!r}: the prefix may not contain '.' or '..'; use s3://bucket/prefix")
    return "/".join([f"s3://{bucket}", *parts])


def local_dir(root: str | Path) -> Path:
    """The folder writers write to: the root itself, or the staging folder of a remote root."""
    if not is_remote(root):
        return Path(root).expanduser().resolve()
    from plop_core.env import plop_home

    base = Path(os.environ.get("PLOP_STAGE_DIR") or plop_home() / "stage").expanduser()
    return (base / "s3" / check_root(str(root)).removeprefix("s3://")).resolve()


@functools.cache
def _filesystem(bucket: str, endpoint: str | None, region: str | None):
    from pyarrow import fs

    if not region and not endpoint:
        region = fs.resolve_s3_region(bucket)
    kw = {"endpoint_override": endpoint} if endpoint else {}
    return fs.S3FileSystem(region=region or "us-east-1", **kw)


def _loads(suffix: str, open_file) -> bool:
    """Does the file load: a Parquet footer reads, a JSON document parses (other files: it opens)."""
    try:
        with open_file() as f:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                pq.read_metadata(f)
            elif suffix == ".json":
                json.loads(f.read())
    except (OSError, ValueError, Exception):  # noqa: BLE001  (pyarrow raises ArrowInvalid for a bad footer)
        return False
    return True


def readable_local(path: Path) -> bool:
    return path.is_file() and _loads(path.suffix, lambda: open(path, "rb"))


def _temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith((".tmp", ".tmpdir"))


class Store:
    """The object store of a remote root; paths are local (under the staging folder), keys derived."""

    def __init__(self, root: str):
        self.uri = check_root(root)
        self.bucket, _, self.prefix = self.uri.removeprefix("s3://").partition("/")
        self.local = local_dir(self.uri)
        env = os.environ.get
        self.fs = _filesystem(self.bucket, env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
                              env("AWS_REGION") or env("AWS_DEFAULT_REGION"))

    def key(self, path: str | Path) -> str:
        rel = Path(path).resolve().relative_to(self.local).as_posix()
        return "/".join(p for p in (self.bucket, self.prefix, "" if rel == "." else rel) if p)

    def url(self, path: str | Path) -> str:
        return "s3://" + self.key(path)

    def _info(self, path):
        return self.fs.get_file_info(self.key(path))

    def put(self, path: str | Path) -> None:
        """Upload a file (one object write, from bytes read in full first) or every file of a folder."""
        path = Path(path)
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and not any(_temp_name(part) for part in p.relative_to(path).parts):
                    self.put(p)
            return
        data = path.read_bytes()
        with self.fs.open_output_stream(self.key(path)) as out:
            out.write(data)

    def exists(self, path: str | Path) -> bool:
        from pyarrow import fs

        return self._info(path).type != fs.FileType.NotFound

    def read_bytes(self, path: str | Path) -> bytes:
        """An object's bytes (FileNotFoundError when absent)."""
        with self.fs.open_input_stream(self.key(path)) as f:
            return f.read()

    def fetch(self, path: str | Path) -> None:
        """Make the local copy of a file (or of every file under a folder) match the store: download what
        is absent locally or of another size. Nothing on the store: nothing done (the reader fails)."""
        from pyarrow import fs

        from plop_core.atomic import atomic_path

        path = Path(path)
        info = self._info(path)
        if info.type == fs.FileType.Directory:
            sel = fs.FileSelector(self.key(path), recursive=True)
            infos = [i for i in self.fs.get_file_info(sel) if i.type == fs.FileType.File]
            files = [(self.local / i.path.removeprefix(self._key_prefix()), i.size) for i in infos]
        elif info.type == fs.FileType.File:
            files = [(path, info.size)]
        else:
            return
        for p, size in files:
            if not (p.is_file() and p.stat().st_size == size):
                with atomic_path(p) as tmp:
                    tmp.write_bytes(self.read_bytes(p))

    def _key_prefix(self) -> str:
        return "/".join(p for p in (self.bucket, self.prefix) if p) + "/"

    def readable(self, path: str | Path) -> bool:
        """The object exists and loads: a Parquet footer reads, a JSON file parses."""
        from pyarrow import fs

        path = Path(path)
        if self._info(path).type != fs.FileType.File:
            return False
        return _loads(path.suffix, lambda: self.fs.open_input_file(self.key(path)))

    def probe(self) -> str | None:
        """None when an object can be written and deleted under the prefix, else why not (one line)."""
        key = "/".join(p for p in (self.bucket, self.prefix, f".plop-probe-{uuid.uuid4().hex}") if p)
        try:
            with self.fs.open_output_stream(key) as out:
                out.write(b"plop")
            self.fs.delete_file(key)
        except Exception as e:  # noqa: BLE001  (no bucket, refused, unreachable endpoint, bad credentials)
            reason = " ".join(str(e).split())
            reason = reason if len(reason) <= 240 else reason[:240].rstrip() + " ..."
            return (f"cannot write to {self.uri} ({reason}); check the bucket exists and the AWS_* environment "
                    "(credentials, AWS_REGION, AWS_ENDPOINT_URL)")
        return None
