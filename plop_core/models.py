"""Load a model from a local folder, a named offline asset or a hub id, and record its identity.

Why: every score must say exactly which weights produced it. `load_model` resolves a `ModelSpec` (or a
string) in a fixed order: an existing local path, then a known offline asset name (fetched on first
use), then a hub id. It always loads safetensors, never runs remote code unless the spec asks, and
returns a `LoadedModel(model, tokenizer, identity)`. `ModelIdentity` holds the source, id, path, hub
revision or the sha256 of the weight files, dtype and shape facts; `identity_key` is its short stable
hash for cache keys. Hashing the weights takes ~1 s per GB, so the digest is cached in a sidecar under
PLOP_HOME/hashes keyed by each file's inode, size, mtime and ctime: ctime changes on every write and cannot
be set back by users (unlike mtime), so a modified file is always re-hashed. Offline assets are checked
against their manifest's digest before loading, and every safetensors header is checked (truncation,
damage) before transformers reads it; both failures say how to repair (`plop assets verify` / `fetch --force`).
Big models: `device_map` / `max_memory` / `offload_folder` (ModelSpec fields or keyword arguments) load
through accelerate's big-model machinery. `plan_loading` computes the placement on a meta model first
(no weights read), checks the execution device's budget and the offload folder, and describes the
plan; `load_model` then loads with exactly that device map. The loaded model carries `plop_weights`
(the files' sha256, per-parameter change stamps and the weights' provenance, e.g. GGUF-dequantized),
which the scorer uses to key cached baselines and to record provenance.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from plop_core import assets
from plop_core.config import ModelSpec
from plop_core.env import hub_offline
from plop_core.weights import (  # noqa: F401  (re-exported: the digest a model's identity records)
    check_safetensors,
    verify_asset_weights,
    weight_files,
    weights_sha256,
)

TASKS = ("causal-lm", "auto", "encoder")
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra",
                 "albert", "mpnet", "modernbert"}


@dataclass(frozen=True)
class ModelIdentity:
    """What was loaded, recorded with every score."""

    source: str  # "asset" | "local" | "hub"
    id: str  # asset name, path as given, or hub id
    path: str | None  # resolved folder (hub models: the HF cache snapshot, None if unknown)
    revision: str | None  # hub commit hash (or the requested revision if the commit is unknown)
    sha256: str | None  # digest of the weight files (local and asset)
    dtype: str
    architecture: str
    model_type: str
    n_params: int
    num_layers: int | None
    task: str  # "causal-lm" | "encoder"
    pad_token: str | None = None  # the pad token in use
    pad_from_eos: bool = False  # True when the tokenizer had no pad token and eos is used instead
    asset_source_sha256: str | None = None  # assets: sha256 of the verified GGUF / source file
    weights_provenance: str | None = None  # e.g. "GGUF Q4_1 dequantized ..." for offline assets
    device_map: str | None = None  # placement summary when loaded with accelerate offload

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    identity: ModelIdentity


def identity_key(identity: ModelIdentity | dict) -> str:
    """Short stable hash naming the weights + dtype (not where they sit): same weights, same key."""
    d = identity.to_dict() if isinstance(identity, ModelIdentity) else identity
    what = {"sha256": d["sha256"]} if d.get("sha256") else {"id": d["id"], "revision": d.get("revision")}
    blob = json.dumps({**what, "dtype": d["dtype"], "task": d.get("task")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- resolution


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~", ".\\")) or "\\" in s or s.count("/") > 1 or s in (".", "..")


def _offline_error(model_id: str) -> ValueError:
    near = difflib.get_close_matches(model_id.split("/")[-1].lower(), list(assets.ASSETS), n=1, cutoff=0.3)
    hint = f" (closest asset: {near[0]})" if near else ""
    return ValueError(
        f"model {model_id!r} is not a local folder or an offline asset, and the hub is offline "
        f"(HF_HUB_OFFLINE=1) with no cached copy. Use an offline asset{hint}: "
        f"{', '.join(assets.ASSETS)} (`plop assets list`), or a local folder path holding config.json "
        f"and *.safetensors, or allow downloads with HF_HUB_OFFLINE=0 on a machine that reaches the hub."
    )


def _check_local(folder: Path) -> None:
    if not folder.is_dir():
        hint = (" GGUF files are not loaded directly: use an offline asset (`plop assets list`) or convert it once "
                "with transformers (`from_pretrained(dir, gguf_file=...)` then `save_pretrained`)."
                if folder.suffix == ".gguf" else "")
        raise FileNotFoundError(f"model path {folder} is a file, not a folder; pass the folder that holds "
                                f"config.json.{hint}")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"model folder {folder} has no config.json; pass a folder made by save_pretrained")
    if not weight_files(folder):
        bins = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        extra = (f" It holds {', '.join(bins[:3])} (pickle): plop loads safetensors only; convert once with "
                 f"`AutoModel.from_pretrained(folder).save_pretrained(new_folder)` in a trusted environment."
                 if bins else "")
        raise FileNotFoundError(f"model folder {folder} has no *.safetensors weights.{extra}")
    for f in weight_files(folder):
        check_safetensors(f)


def resolve(spec: ModelSpec | str, progress: bool = True, fetch: bool = True) -> tuple[str, str, Path | None]:
    """(source, id, folder) for a spec: local path first, then an asset name (fetched if missing), else hub.
    Local folders and assets are checked before anything loads them (safetensors headers; assets' digests
    against their manifest). fetch=False: an asset not fetched yet gives folder None instead of fetching."""
    spec = ModelSpec(id=spec) if isinstance(spec, str) else spec
    mid = spec.id
    if not mid.strip():
        raise ValueError(f"empty model id; give a local folder, an offline asset ({', '.join(assets.ASSETS)}) "
                         f"or a hub id like org/name")
    p = Path(mid).expanduser()
    if p.exists():
        _check_local(p)
        return "local", mid, p.resolve()
    if _looks_like_path(mid):
        raise FileNotFoundError(f"model path {mid!r} does not exist; check the path, or use an offline asset "
                                f"({', '.join(assets.ASSETS)}) or a hub id like org/name")
    if mid in assets.ASSETS:
        folder = assets.asset_path_or_none(mid)
        if folder is None:
            if not fetch:
                return "asset", mid, None
            assets._say(f"offline asset {mid} is not fetched yet; fetching it now (once)", progress)
            folder = assets.fetch_asset(mid, progress=progress)
        verify_asset_weights(mid, folder)
        return "asset", mid, folder
    if hub_offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(mid, "config.json", revision=spec.revision)
        except Exception:  # invalid repo id etc.
            cached = None
        if not isinstance(cached, str):
            raise _offline_error(mid)
    return "hub", mid, None


def _task_for(config, task: str, mid: str) -> str:
    is_encoder = config.model_type in ENCODER_TYPES
    if task == "auto":
        return "encoder" if is_encoder else "causal-lm"
    if task == "causal-lm" and is_encoder:
        raise ValueError(f"model {mid!r} is an encoder ({config.model_type}) with no causal LM head; "
                         f"load it with task='encoder' (or 'auto')")
    return task


@dataclass
class LoadPlan:
    """Where the weights will go, decided before any weight is read."""

    device_map: dict | None  # accelerate device map (None: the whole model on `device`)
    execution_device: str
    max_memory: dict | None  # parsed, in bytes
    offload_folder: str | None
    model_bytes: int
    largest_layer: tuple[str, int]
    disk_bytes: int = 0
    placement: str = ""  # placement_summary of device_map, blocks counted on the model's structure

    @property
    def summary(self) -> str:
        from plop_core.offload import human, placement_summary

        name, size = self.largest_layer
        if self.device_map is None:
            return (f"placement: whole model in memory on {self.execution_device} ({human(self.model_bytes)}; "
                    f"largest layer {name} {human(size)})")
        budget = ", ".join(f"{k}={human(v)}" for k, v in (self.max_memory or {}).items()) or "accelerate's default"
        text = (f"placement (device_map, max_memory {budget}): {self.placement or placement_summary(self.device_map)}; "
                f"executes on "
                f"{self.execution_device}; model {human(self.model_bytes)}, largest layer {name} {human(size)}")
        if self.disk_bytes:
            text += f"; {human(self.disk_bytes)} read from disk per forward (offload folder {self.offload_folder})"
        return text


def _dtype_of(name: str):
    import torch

    if name != "auto" and not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"dtype {name!r} is not a torch dtype; use float32, bfloat16, float16 or auto")
    return None if name == "auto" else getattr(torch, name)


def plan_loading(spec: ModelSpec | str, *, task: str = "causal-lm", dtype: str | None = None, device: str | None = None,
                 device_map: str | None = None, max_memory: dict | list | None = None,
                 offload_folder: str | None = None, batch_size: int = 8, max_length: int = 256,
                 progress: bool = True) -> LoadPlan:
    """The placement `load_model` will use, computed on a meta model (no weights read), with the checks that
    must pass before loading: the execution device's `max_memory` holds the largest layer plus activations of
    one batch (`batch_size` x `max_length`), and the offload folder is writable with room to spare."""
    import torch
    from transformers import AutoConfig

    from plop_core import offload

    spec = ModelSpec(id=spec) if isinstance(spec, str) else spec
    device_map = device_map if device_map is not None else spec.device_map
    max_memory = offload.parse_max_memory(max_memory if max_memory is not None else spec.max_memory)
    offload_folder = offload_folder if offload_folder is not None else spec.offload_folder
    torch_dtype = _dtype_of(dtype or spec.dtype)
    source, mid, folder = resolve(spec, progress)
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if source == "hub" and spec.revision:
        kw["revision"] = spec.revision
    config = AutoConfig.from_pretrained(str(folder) if folder is not None else mid, **kw)
    meta = offload.meta_model(config, torch_dtype or torch.float32, _task_for(config, task, mid))
    sizes = offload.layer_sizes(meta)
    largest = max(sizes.items(), key=lambda kv: kv[1])
    total = sum(p.numel() * p.element_size() for p in meta.parameters())
    if device_map is None and max_memory:
        device_map = "auto"
    if device_map is None or device_map in ("cpu", "mps") or device_map.startswith("cuda"):
        dev = device_map or device or ("cuda" if torch.cuda.is_available() else "cpu")
        return LoadPlan(None, dev, max_memory, offload_folder, total, largest)
    act = offload.activation_bytes(config, batch_size, max_length, (torch_dtype or torch.float32).itemsize)
    exec_key = next((k for k in (max_memory or {}) if k not in ("cpu", "disk")), None)
    if exec_key is None and torch.cuda.is_available() and not max_memory:
        exec_key = 0
    exec_dev = "cpu" if exec_key is None else (f"cuda:{exec_key}" if isinstance(exec_key, int) else str(exec_key))
    offload.check_budget(meta, max_memory, exec_dev, act)
    weights_budget = None  # the execution device also holds the activations: accelerate plans weights only
    if max_memory:
        key = "cpu" if exec_key is None else exec_key
        weights_budget = {**max_memory, key: max(0, max_memory[key] - act)} if key in max_memory else max_memory
    dmap = offload.plan_device_map(meta, weights_budget, device_map)
    on_disk = offload.disk_bytes(dmap, meta)
    if on_disk and not offload_folder:
        raise ValueError(f"{offload.human(on_disk)} of weights do not fit in max_memory and must go to disk: pass "
                         "--offload-folder DIR (ModelSpec.offload_folder) on a disk with that much free space, or "
                         "raise --max-memory")
    if on_disk:
        offload_folder = str(offload.check_offload_folder(offload_folder, on_disk if folder is None else 0))
    plan = LoadPlan(dmap, exec_dev, max_memory, offload_folder, total, largest, on_disk,
                    offload.placement_summary(dmap, meta))
    _PLANS[_plan_key(spec, task, dtype)] = plan
    return plan


_PLANS: dict[str, LoadPlan] = {}  # the last plan per spec: load_model(spec) loads what plan_loading printed


def _plan_key(spec: ModelSpec, task: str, dtype: str | None) -> str:
    return json.dumps([spec.model_dump(mode="json"), task, dtype], sort_keys=True)


def load_model(spec: ModelSpec | str, *, task: str = "causal-lm", dtype: str | None = None,
               device: str | None = None, progress: bool = True, device_map: str | None = None,
               max_memory: dict | list | None = None, offload_folder: str | None = None,
               plan: LoadPlan | None = None) -> LoadedModel:
    """Load model + tokenizer and describe them. `dtype` overrides spec.dtype ("float32" default);
    `device` defaults to cuda when available, else cpu. Encoders load with AutoModel (no head).
    `device_map`/`max_memory`/`offload_folder` (default: the spec's fields) load with accelerate offload,
    following `plan_loading` (pass `plan` to reuse one already computed)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    spec = ModelSpec(id=spec) if isinstance(spec, str) else spec
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    dtype_name = dtype or spec.dtype
    _dtype_of(dtype_name)
    wants_map = any(x is not None for x in (device_map, max_memory, offload_folder, spec.device_map, spec.max_memory))
    if plan is None and wants_map and device_map is None and max_memory is None and offload_folder is None:
        plan = _PLANS.get(_plan_key(spec, task, dtype))
    if plan is None and wants_map:
        plan = plan_loading(spec, task=task, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory,
                            offload_folder=offload_folder, progress=progress)
    source, mid, folder = resolve(spec, progress)
    where = str(folder) if folder is not None else mid
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if source == "hub" and spec.revision:
        kw["revision"] = spec.revision
    try:
        config = AutoConfig.from_pretrained(where, **kw)
        task = _task_for(config, task, mid)
        cls = AutoModel if task == "encoder" else AutoModelForCausalLM
        placement = {}
        if plan is not None and plan.device_map is not None:
            placement = {"device_map": plan.device_map, "offload_folder": plan.offload_folder}
            if plan.max_memory:
                placement["max_memory"] = plan.max_memory
        elif plan is not None:
            device = plan.execution_device
        model = _from_pretrained(cls, where, config, dtype_name, placement, kw)
        tokenizer = AutoTokenizer.from_pretrained(where, **kw)
    except OSError as e:
        if source == "hub" and hub_offline():
            raise _offline_error(mid) from e
        raise FileNotFoundError(f"could not load model {mid!r} ({source}): {e}. Check the id, revision and that "
                                f"the weights are in safetensors form") from e
    pad_from_eos = False
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        pad_from_eos = True
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not getattr(model, "hf_device_map", None):
        model.to(device)
    model.eval()

    revision = sha = asset_sha = None
    if source == "hub":  # the HF cache snapshot folder is named by its commit hash
        folder = _hub_snapshot(mid, spec.revision)
        revision = getattr(model.config, "_commit_hash", None) or (folder.name if folder else spec.revision)
        sha = weights_sha256(folder) if folder else None
    else:
        sha = weights_sha256(folder)
        if source == "asset":
            man = json.loads((folder / "plop_asset.json").read_text())
            asset_sha = (man.get("gguf") or {}).get("sha256") or (man.get("files") or {}).get("model.safetensors")
    text_cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    provenance = _provenance(source, folder)
    _mark_weights(model, sha, provenance)
    from plop_core.offload import placement_summary

    dmap = getattr(model, "hf_device_map", None)
    identity = ModelIdentity(
        source=source, id=mid, path=str(folder) if folder is not None else None, revision=revision, sha256=sha,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."), architecture=type(model).__name__,
        model_type=config.model_type, n_params=sum(p.numel() for p in model.parameters()),
        num_layers=getattr(text_cfg, "num_hidden_layers", None), task=task, pad_token=tokenizer.pad_token,
        pad_from_eos=pad_from_eos, asset_source_sha256=asset_sha, weights_provenance=provenance,
        device_map=placement_summary(dmap, model) if dmap else None,
    )
    return LoadedModel(model=model, tokenizer=tokenizer, identity=identity)


def _from_pretrained(cls, where, config, dtype_name, placement, kw):
    """from_pretrained, with full/read-only offload folders turned into one clear line."""
    import errno

    import torch

    try:
        return cls.from_pretrained(where, config=config, use_safetensors=True,
                                   dtype="auto" if dtype_name == "auto" else getattr(torch, dtype_name),
                                   **placement, **kw)
    except OSError as e:
        folder = placement.get("offload_folder")
        if folder and e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
            why = "is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "is read-only"
            raise ValueError(f"offload folder {folder} {why} ({e.strerror}) while offloading weights; pass "
                             "--offload-folder on a writable disk with more free space") from None
        raise


def _provenance(source: str, folder: Path | None) -> str | None:
    """What the weights are, when that matters for reading scores: offline assets are GGUF-dequantized."""
    if source != "asset" or folder is None:
        return None
    man = json.loads((folder / "plop_asset.json").read_text())
    if not man.get("gguf"):
        return None
    note = f"; {man['dtype_note']}" if man.get("dtype_note") else ""
    return (f"GGUF-dequantized: {man.get('model', folder.name)} weights carry quantization noise "
            f"({man.get('provenance', 'offline asset')}{note})")


def _mark_weights(model, sha: str | None, provenance: str | None) -> None:
    """Record the weights' identity on the model (cached baselines, provenance of scores)."""
    from plop_core.baselines import weight_stamps

    named = [(n, p) for n, p in model.named_parameters() if not p.is_meta]
    stamps = dict(zip([n for n, _ in named], weight_stamps([p for _, p in named]), strict=True))
    model.plop_weights = {"sha256": sha, "stamps": stamps, "provenance": provenance}


def _hub_snapshot(mid: str, revision: str | None) -> Path | None:
    """The local snapshot folder (named by commit) of a hub model, when its weights are in the HF cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cfg = try_to_load_from_cache(mid, "config.json", revision=revision)
    except Exception:
        return None
    if isinstance(cfg, str) and weight_files(Path(cfg).parent):
        return Path(cfg).parent
    return None
