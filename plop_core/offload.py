"""Models bigger than memory: accelerate's offload, seen from the scorer.

Why a module of its own: with `device_map="auto"` + `max_memory` (+ `offload_folder`), transformers hands the
model to accelerate, which keeps offloaded weights on the `meta` device and materializes them only inside
their module's forward (an `AlignDevicesHook` wraps `forward`: load in `pre_forward`, back to meta in
`post_forward`). The scorer needs those weights (baselines, fused parts, experts, the reference
estimator's W r), so this module offers exactly three things:

- `attach_inside(module, fn)`: run `fn(module, args, kwargs, output)` after the module's own forward but
  *before* accelerate puts its weights back on meta (our hooks go into accelerate's `SequentialHook`,
  around its own; a plain torch forward hook where accelerate installed none). Removal restores the
  module's hook object exactly.
- `read_parameter(model, name)`: a parameter's value, read tensor by tensor from accelerate's weights map
  (a `safe_open` of the checkpoint shard or of the offload folder's file, or the CPU copy) when the
  parameter is on meta; never the whole state dict.
- planning and budgets: `plan_device_map` (the placement accelerate will choose, computed on a meta model
  before loading), `placement_summary`, `check_budget` (a max_memory too small for one layer plus
  activations fails with the smallest budget that works), `check_offload_folder` (full or read-only disk),
  `peak_memory` (what the process used).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch

GiB = 2**30
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


# ---------------------------------------------------------------------------------------- hooks


def align_hook(module: torch.nn.Module):
    """accelerate's AlignDevicesHook of `module` (inside a SequentialHook too), or None."""
    hook = getattr(module, "_hf_hook", None)
    stack = [hook] if hook is not None else []
    while stack:
        h = stack.pop()
        if hasattr(h, "hooks"):
            stack.extend(h.hooks)
        elif type(h).__name__ == "AlignDevicesHook":
            return h
    return None


class _Handle:
    def __init__(self, undo):
        self._undo = undo

    def remove(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None


def attach_inside(module: torch.nn.Module, fn) -> _Handle:
    """Call `fn(module, args, kwargs, output)` after each forward of `module`, while its weights are real.

    Without an accelerate hook this is `register_forward_hook(with_kwargs=True)`. With one, accelerate's
    `new_forward` reads `module._hf_hook` at call time, so we install SequentialHook(score, theirs, stash):
    pre_forward order stash-last sees the inputs already moved to the execution device; post_forward order
    score-first runs before accelerate's post_forward sends offloaded weights back to meta.
    """
    own = module.__dict__  # accelerate sets both as plain attributes; no nn.Module.__getattr__ miss per module
    theirs = own.get("_hf_hook")
    if theirs is None or "_old_forward" not in own:
        return module.register_forward_hook(fn, with_kwargs=True)
    from accelerate.hooks import ModelHook, SequentialHook

    box: list = [None, None]

    class _Stash(ModelHook):
        def pre_forward(self, mod, *args, **kwargs):
            box[0], box[1] = args, kwargs
            return args, kwargs

    class _Score(ModelHook):
        def post_forward(self, mod, output):
            args, kwargs = box
            box[0] = box[1] = None
            fn(mod, args, kwargs, output)
            return output

    ours = SequentialHook(_Score(), theirs, _Stash())
    module._hf_hook = ours

    def undo():
        if getattr(module, "_hf_hook", None) is ours:
            module._hf_hook = theirs
    return _Handle(undo)


def plain_forward(module: torch.nn.Module):
    """The module's own forward, bypassing torch hooks and accelerate's hook (weights must be real)."""
    return getattr(module, "_old_forward", module.forward)


# ---------------------------------------------------------------------------------------- weights


def is_offloaded(model: torch.nn.Module) -> bool:
    """True when some parameter lives on meta (accelerate CPU/disk offload)."""
    return any(p.is_meta for p in model.parameters())


def read_parameter(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The value of parameter `name` (e.g. `model.layers.3.mlp.up_proj.weight`): the tensor itself when it is
    resident, else one tensor read from accelerate's weights map of its module (safetensors `safe_open` of
    one tensor, a memmap of the offload folder's file, or the offloaded CPU copy)."""
    mod_name, _, leaf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    tensor = getattr(mod, leaf)
    if not tensor.is_meta:
        return tensor
    hook = align_hook(mod)
    weights = getattr(hook, "weights_map", None) if hook is not None else None
    if weights is None:
        raise ValueError(f"parameter {name} is on the meta device and no accelerate offload map holds it; load the "
                         "model with plop_core.models.load_model(..., device_map=..., offload_folder=...) or "
                         "transformers' from_pretrained(device_map=...), not from an empty-weights init")
    value = weights[leaf]
    return value.to(tensor.dtype) if value.dtype != tensor.dtype else value


# ---------------------------------------------------------------------------------------- budgets


def parse_size(text: str | int | float) -> int:
    """'4GiB', '500MB', '1.5 GB', 1024 -> bytes (GiB/MiB binary, GB/MB decimal, as accelerate reads them)."""
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]i?b|b)?\s*", str(text).lower())
    if not m:
        raise ValueError(f"memory size {text!r} is not a number with a unit such as 4GiB, 500MB or 2GB")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "b"])


def parse_max_memory(items) -> dict:
    """['cpu=4GiB', '0=20GiB'] or {'cpu': '4GiB'} -> {'cpu': bytes, 0: bytes} (accelerate's device keys)."""
    if items is None:
        return None
    pairs = items.items() if isinstance(items, dict) else [str(i).split("=", 1) if "=" in str(i) else (None, i)
                                                           for i in items]
    out = {}
    for dev, size in pairs:
        if dev is None:
            raise ValueError(f"max_memory entry {size!r} must look like DEVICE=SIZE, e.g. cpu=4GiB or cuda:0=20GiB")
        dev = str(dev).strip().lower()
        key = int(dev.split(":")[1]) if dev.startswith("cuda:") else int(dev) if dev.isdigit() else \
            0 if dev == "cuda" else dev
        if key not in ("cpu", "disk", "mps") and not isinstance(key, int):
            raise ValueError(f"max_memory device {dev!r} is not cpu, cuda, cuda:N, N or mps")
        out[key] = parse_size(size)
    return out


def human(n: float) -> str:
    for unit, div in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def meta_model(config, dtype: torch.dtype, task: str = "causal-lm"):
    """The model class built on the meta device (no memory): sizes and the layer structure only."""
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModel if task == "encoder" else AutoModelForCausalLM
    with torch.device("meta"):
        return cls.from_config(config, dtype=dtype)


def layer_sizes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of each unit accelerate will not split (decoder blocks), and of the other top-level leaves."""
    no_split = set(getattr(model, "_no_split_modules", None) or [])
    sizes: dict[str, int] = {}

    def walk(mod, prefix):
        direct = sum(t.numel() * t.element_size() for t in mod.parameters(recurse=False))
        if type(mod).__name__ in no_split or not list(mod.children()):
            total = sum(t.numel() * t.element_size() for t in mod.parameters())
            if total:
                sizes[prefix or "(root)"] = total
            return
        if direct:
            sizes[(prefix + "." if prefix else "") + "(own)"] = direct
        for n, child in mod.named_children():
            walk(child, f"{prefix}.{n}" if prefix else n)
    walk(model, "")
    return sizes


def activation_bytes(config, batch_size: int, max_length: int, itemsize: int = 4) -> int:
    """Rough activation peak of one forward under no_grad, in the model's dtype (`itemsize` bytes): a few
    hidden-size and three intermediate-size tensors per token, one fp32 attention score matrix per head,
    and the scorer's fp32 per-token norm buffers."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(cfg, "hidden_size", 1024)
    inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
    heads = getattr(cfg, "num_attention_heads", 16)
    layers = getattr(cfg, "num_hidden_layers", 1) or 1
    tokens = batch_size * max_length
    return int(itemsize * tokens * (6 * hidden + 3 * inter) + 4 * batch_size * heads * max_length ** 2
               + 4 * tokens * 2 * 8 * layers)


def check_budget(model, max_memory: dict | None, device: str, act_bytes: int) -> None:
    """The execution device's budget must hold the largest layer plus activations; else say what would work."""
    if not max_memory:
        return
    key = "cpu" if device == "cpu" else (int(device.split(":")[1]) if ":" in device else 0)
    if key not in max_memory:
        return
    sizes = layer_sizes(model)
    name, largest = max(sizes.items(), key=lambda kv: kv[1])
    need = largest + act_bytes
    if max_memory[key] < need:
        dev = "cpu" if key == "cpu" else f"cuda:{key}"
        raise ValueError(
            f"max_memory {dev}={human(max_memory[key])} is too small: the largest layer ({name}, {human(largest)}) "
            f"plus activations (~{human(act_bytes)}) must fit on the execution device; the smallest budget that "
            f"works is about {dev}={human(need * 1.05)} (pass --max-memory {dev}={int(need * 1.05 / 2**20) + 1}MiB or "
            "more, or lower --batch-size / --max-length)")


def plan_device_map(model, max_memory: dict | None, device_map: str = "auto") -> dict:
    """The device map transformers' from_pretrained(device_map=..., max_memory=...) will choose for `model`
    (a meta model: see `meta_model`)."""
    if device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        return {"": device_map}
    from transformers.integrations.accelerate import _get_device_map

    return dict(_get_device_map(model, device_map, max_memory, None))


def placement_summary(device_map: dict, model=None) -> str:
    """'12 blocks on cpu; 20 blocks on disk (offloaded, read per forward); embed_tokens on cpu, ...' text.
    With `model` (meta is fine), an entry that is a whole ModuleList of blocks counts its blocks."""
    blocks, others = Counter(), {}
    for name, dev in device_map.items():
        dev = f"cuda:{dev}" if isinstance(dev, int) else str(dev)
        mod = None
        if model is not None:
            try:
                mod = model.get_submodule(name) if name else model
            except AttributeError:
                mod = None
        if re.search(r"\.\d+$", name):
            blocks[dev] += 1
        elif isinstance(mod, torch.nn.ModuleList):
            blocks[dev] += len(mod)
        else:
            others[name or "(whole model)"] = dev
    parts = [f"{n} block{'s' if n != 1 else ''} on {d}" + (" (offloaded, read per forward)" if d == "disk" else "")
             for d, n in blocks.items()]
    if others:
        parts.append(", ".join(f"{n.rsplit('.', 1)[-1]} on {d}" for n, d in others.items()))
    return "; ".join(parts) if parts else "nothing placed"


def disk_bytes(device_map: dict, model) -> int:
    """Bytes of the parameters placed on disk by `device_map`."""
    total = 0
    for name, dev in device_map.items():
        if dev == "disk":
            mod = model.get_submodule(name) if name else model
            total += sum(p.numel() * p.element_size() for p in mod.parameters())
    return total


def check_offload_folder(folder: str | os.PathLike, need_bytes: int) -> Path:
    """The offload folder must be creatable, writable and have room for what may be written there."""
    path = Path(folder).expanduser()
    probe = None
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".plop-write-test-")
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        why = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable",
               errno.EPERM: "is not writable", errno.ENOSPC: "is on a full disk"}.get(e.errno, f"failed: {e.strerror}")
        raise ValueError(f"offload folder {path} {why}; pass --offload-folder on a writable disk with at least "
                         f"{human(need_bytes)} free") from None
    finally:
        if probe is not None and os.path.exists(probe):
            os.unlink(probe)
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise ValueError(f"offload folder {path} has {human(free)} free but up to {human(need_bytes)} of offloaded "
                         "weights may be written there; free space or pass --offload-folder on a larger disk")
    return path.resolve()


def peak_memory(device: str | torch.device | None = None) -> dict:
    """Peak resident memory of this process so far (ru_maxrss), and the CUDA allocator peak when used."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    out = {"peak_rss_bytes": int(rss)}
    dev = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (dev is None or dev.type == "cuda"):
        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    return out
