"""The random baseline rho(W) = E_u ||W u|| (u uniform on the unit sphere) of a weight, and its cache.

Why a module of its own: rho(W) depends on the weight only, not on the data, so the `probe` estimator
computes it once per weight (K seeded unit vectors, one matmul W @ U) and caches it; `analytic` is the
closed-form upper bound ||W||_F / sqrt(d_in) (Jensen: E||Wu|| <= sqrt(E||Wu||^2)). The per-token
`reference` estimator of the authors lives in the scoring hooks (`plop_core.nfn`), since it needs the
tokens. Weights are (d_out, d_in) or, for packed MoE experts, (E, d_out, d_in): one baseline per expert.
Fused modules also get one baseline per part from the part's output rows, rho(W[rows]).

The cache is a dict-like (any MutableMapping of str -> JSON-able dict) or a directory of small JSON
files (one per key, written atomically; safe for concurrent workers). By default (`None`) it is the
directory $PLOP_HOME/baselines, shared by the CLI, notebooks and sweeps; `False` turns it off. Keys hold
the model's name and revision, the estimator, the module, n_probe, seed and the weight's content
identity (`weight_id`): the sha256 of the checkpoint files plus the parameter name and dtype when the
model came from `plop_core.models.load_model` and the weight is unchanged since loading (or offloaded,
hence unchangeable), else a blake2b hash of the weight's bytes. A finetuned or modified weight never
reuses a stale baseline. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from plop_core.atomic import atomic_write_text
from plop_core.config import ESTIMATORS  # noqa: F401 (defined once, in the config schema; nfn imports it here)

CACHE_VERSION = 2


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one (seed, module) pair, independent of which other modules are scored."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Baseline:
    """rho and its standard error: 0-d arrays for one weight, (E,) arrays for packed experts."""

    rho: np.ndarray
    se: np.ndarray
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"rho": np.asarray(self.rho).tolist(), "se": np.asarray(self.se).tolist(),
                "parts": {k: [np.asarray(r).tolist(), np.asarray(s).tolist()] for k, (r, s) in self.parts.items()}}

    @classmethod
    def from_json(cls, d: dict) -> Baseline:
        return cls(np.asarray(d["rho"], dtype=np.float64), np.asarray(d["se"], dtype=np.float64),
                   {k: (np.asarray(r, dtype=np.float64), np.asarray(s, dtype=np.float64))
                    for k, (r, s) in d.get("parts", {}).items()})


def _as_stack(weight: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if weight.dim() == 2:
        return weight.unsqueeze(0), False
    if weight.dim() == 3:
        return weight, True
    raise ValueError(f"weight must be 2-D (d_out, d_in) or 3-D (experts, d_out, d_in), got shape {tuple(weight.shape)}")


def _finish(values: list[tuple[float, float]], stacked: bool) -> tuple[np.ndarray, np.ndarray]:
    rho = np.array([v[0] for v in values], dtype=np.float64)
    se = np.array([v[1] for v in values], dtype=np.float64)
    return (rho, se) if stacked else (rho.reshape(()), se.reshape(()))


def unit_probes(d_in: int, n_probe: int, seed: int, name: str) -> torch.Tensor:
    """(d_in, n_probe) fp32 seeded unit vectors; drawn on CPU so every device gets the same ones."""
    gen = torch.Generator().manual_seed(derive_seed(seed, name))
    u = torch.randn(d_in, n_probe, generator=gen, dtype=torch.float32)
    return u / torch.linalg.vector_norm(u, dim=0, keepdim=True)


def probe_baseline(weight: torch.Tensor, parts: dict[str, torch.Tensor], n_probe: int, seed: int,
                   name: str) -> Baseline:
    """Monte-Carlo rho(W) from n_probe seeded unit vectors; se = std(||W u||) / sqrt(n_probe)."""
    if n_probe < 2:
        raise ValueError(f"n_probe must be >= 2 to report a standard error, got {n_probe}")
    stack, stacked = _as_stack(weight)
    probes = unit_probes(stack.shape[-1], n_probe, seed, name).to(stack.device)
    whole, by_part = [], {k: [] for k in parts}
    for w in stack:  # one expert at a time keeps memory at d_out x n_probe
        norms_rows = (w.float() @ probes)
        for key, rows in [(None, None), *parts.items()]:
            sel = norms_rows if rows is None else norms_rows.index_select(0, rows.to(norms_rows.device))
            n = torch.linalg.vector_norm(sel, dim=0).double()
            val = (float(n.mean()), float(n.std() / n_probe ** 0.5))
            (whole if key is None else by_part[key]).append(val)
    return Baseline(*_finish(whole, stacked), {k: _finish(v, stacked) for k, v in by_part.items()})


def analytic_baseline(weight: torch.Tensor, parts: dict[str, torch.Tensor]) -> Baseline:
    """||W||_F / sqrt(d_in): the root-mean-square of ||W u||, an upper bound on rho(W); se is 0."""
    stack, stacked = _as_stack(weight)
    d_in = stack.shape[-1]
    whole, by_part = [], {k: [] for k in parts}
    for w in stack:
        w = w.double()
        whole.append((float(torch.linalg.norm(w) / d_in ** 0.5), 0.0))
        for key, rows in parts.items():
            by_part[key].append((float(torch.linalg.norm(w.index_select(0, rows.to(w.device))) / d_in ** 0.5), 0.0))
    return Baseline(*_finish(whole, stacked), {k: _finish(v, stacked) for k, v in by_part.items()})


def model_identity(model: torch.nn.Module) -> str:
    """Name and revision of the model as loaded (the weight hash in the key guards against edits)."""
    cfg = getattr(model, "config", None)
    name = getattr(cfg, "_name_or_path", "") or type(model).__name__
    revision = getattr(cfg, "_commit_hash", None) or ""
    return f"{name}@{revision}"


_HASHES: dict[int, tuple] = {}  # id(tensor) -> (weakref, stamp, digest)


def stamp_views(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """The strided samples `weight_stamps` reads (every 1009th value, ending at the last one), as views: they
    share the weights' storage, so a caller that keeps them sees later in-place edits (and notices a
    replaced storage through data_ptr)."""
    views = [w.detach().reshape(-1) for w in weights if not w.is_meta and w.numel()]
    return [v[(v.numel() - 1) % 1009::1009] for v in views]


def weight_stamps(weights: list[torch.Tensor], views: list[torch.Tensor] | None = None) -> list[tuple]:
    """Cheap change detectors of many weights at once: data_ptr, _version, shape, dtype and the fp64 L1 norm of
    `stamp_views` (edits through `.data` do not bump `_version`). One fused `_foreach_norm` over the strided
    views: ~1-2.5 ms for a 100M-parameter model's 210 weights, so every scoring call can afford to check that
    cached baselines still describe the weights. `views`: `stamp_views(weights)` kept from an earlier call."""
    views = stamp_views(weights) if views is None else views  # offloaded (meta) weights have no values here
    with torch.no_grad():
        sums = iter(torch.stack(torch._foreach_norm(views, 1, dtype=torch.float64)).tolist() if views else [])
    return [(w.data_ptr(), w._version, tuple(w.shape), str(w.dtype),
             None if w.is_meta or not w.numel() else next(sums)) for w in weights]


def weight_stamp(weight: torch.Tensor) -> tuple:
    """`weight_stamps` of one weight."""
    return weight_stamps([weight])[0]


def weight_id(model: torch.nn.Module, name: str, weight: torch.Tensor, stamp: tuple | None = None) -> str:
    """Content identity of parameter `name` of `model` (see the module docstring); `stamp`: its
    `weight_stamps` entry when the caller computed them for many weights at once."""
    info = getattr(model, "plop_weights", None)  # set by plop_core.models.load_model
    if info is not None and info.get("sha256"):
        loaded = info.get("stamps", {}).get(name)
        if weight.is_meta or (loaded is not None and tuple(loaded) == (stamp or weight_stamp(weight))):
            return f"files-sha256:{info['sha256']}|{name}|{weight.dtype}"
    if weight.is_meta:
        from plop_core.offload import read_parameter

        weight, stamp = read_parameter(model, name), None
    return weight_hash(weight, stamp)


def weight_hash(weight: torch.Tensor, stamp: tuple | None = None) -> str:
    """blake2b of the weight's bytes, memoised per tensor while its stamp is unchanged, so repeated
    scoring of one model hashes once. The stamp (`weight_stamps`) holds data_ptr and _version plus a
    strided sample's norm (edits through `.data` do not bump `_version`; a strided sample keeps the check at a
    few ms for a 100M-parameter model). An edit through `.data` that touches none of the sampled values
    would reuse the old hash: after such surgery pass a fresh cache."""
    stamp = stamp or weight_stamp(weight)
    memo = _HASHES.get(id(weight))
    if memo is not None and memo[0]() is weight and memo[1] == stamp:
        return memo[2]
    digest = _hash_bytes(weight)
    if len(_HASHES) > 100_000:  # drop entries of tensors that are gone
        for k in [k for k, v in _HASHES.items() if v[0]() is None]:
            del _HASHES[k]
    _HASHES[id(weight)] = (weakref.ref(weight), stamp, digest)
    return digest


def _hash_bytes(weight: torch.Tensor) -> str:
    w = weight.detach().contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(w.shape)}|{w.dtype}".encode())
    h.update(w.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(identity: str, module: str, n_probe: int, seed: int, weight: torch.Tensor | str,
              estimator: str = "probe") -> str:
    """Key of a baseline; `weight` is the stored parameter (only hashed) or its `weight_id`."""
    wid = weight if isinstance(weight, str) else weight_hash(weight)
    return json.dumps({"v": CACHE_VERSION, "model": identity, "module": module, "estimator": estimator,
                       "n_probe": int(n_probe) if estimator == "probe" else None,
                       "seed": int(seed) if estimator == "probe" else None, "weight": wid}, sort_keys=True)


class BaselineCache:
    """Baselines by key in a dict-like, or in a directory as `<sha256(key)[:32]>.json` files."""

    def __init__(self, store: MutableMapping | str | os.PathLike | None | bool):
        if store is None or store is True:
            from plop_core.env import plop_home

            store = plop_home() / "baselines"
        self.store = None if store is False else store
        store = self.store
        self.dir = None
        if isinstance(store, (str, os.PathLike)):
            self.dir = Path(store)
            if self.dir.exists() and not self.dir.is_dir():
                raise ValueError(f"baseline_cache {self.dir} is a file; pass a directory path (created if missing) "
                                 "or a dict")
            self.dir.mkdir(parents=True, exist_ok=True)
        elif store is not None and not isinstance(store, MutableMapping):
            raise TypeError(f"baseline_cache must be a dict-like, a directory path, None (default: $PLOP_HOME/baselines) or False "
                            f"(off), got {type(store).__name__}")

    def _path(self, key: str) -> Path:
        return self.dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")

    def get(self, key: str) -> Baseline | None:
        if self.store is None:
            return None
        if self.dir is None:
            value = self.store.get(key)
            return Baseline.from_json(value) if value is not None else None
        path = self._path(key)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a corrupt entry is recomputed and overwritten
        return Baseline.from_json(data["value"]) if data.get("key") == key else None

    def put(self, key: str, baseline: Baseline) -> None:
        if self.store is None:
            return
        if self.dir is None:
            self.store[key] = baseline.to_json()
            return
        atomic_write_text(self._path(key), json.dumps({"key": key, "value": baseline.to_json()}))
