"""Files PEFT loads as they are: `adapter_config.json` for a placement, plus `targets.md` for people.

    from plop_core.peft_files import write_adapter_config
    write_adapter_config(placement, "out/", r=16)          # or a LoraConfig (+ placement= for the summary)
    LoraConfig.from_pretrained("out/")                     # plain PEFT, no plop import needed

Why: PEFT users read a folder with `LoraConfig.from_pretrained(folder)` / `PeftConfig.from_pretrained`,
which look for `adapter_config.json` in PEFT's own format. So the file is written by PEFT itself
(`LoraConfig.save_pretrained`); the only change is that list-valued `target_modules` /
`target_parameters` (a set inside LoraConfig, dumped by PEFT in hash order) are written in the model's
order (layer by layer, canonical type order), so the file reads top to bottom like the model.

`targets.md` says in words what the config targets: base model, task type, strategy and NFN of the
chosen types, LoRA rank/alpha and trainable parameters, one row per type (modules, layers, shapes, an
exact regex) and one row per layer (the module of each chosen type, relative to the layer). It is for
people; nothing reads it back.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from plop_core.atomic import atomic_write_text
from plop_core.modules import TYPE_ORDER
from plop_core.placement import Placement

CONFIG_NAME = "adapter_config.json"
SUMMARY_NAME = "targets.md"


def _ordered(values, order: list[str]) -> list[str]:
    rank = {n: i for i, n in enumerate(order)}
    return sorted(values, key=lambda n: (rank.get(n, len(rank)), n))


def write_adapter_config(placement_or_config, folder: str | Path, *, r: int = 16, lora_alpha: int | None = None,
                         lora_dropout: float = 0.0, placement: Placement | None = None, model=None,
                         **lora_kwargs) -> dict[str, Path]:
    """Write `adapter_config.json` (PEFT's format, via LoraConfig.save_pretrained) and `targets.md` into `folder`.

    placement_or_config: a `Placement` (the config is `placement.to_lora_config(r, lora_alpha,
        lora_dropout, **lora_kwargs)`) or a `peft.LoraConfig` written as is (pass `placement=` to get
        the per-layer summary).
    model: when given, check first (PEFT's own matching rule) that the config reaches exactly the
        placement's modules on it, and write nothing otherwise.
    Returns {"adapter_config": path, "targets": path}. Other files in `folder` are left alone.
    """
    from peft import LoraConfig

    if isinstance(placement_or_config, Placement):
        placement = placement_or_config
        config = placement.to_lora_config(r, lora_alpha, lora_dropout, **lora_kwargs)
    elif isinstance(placement_or_config, LoraConfig):
        config = placement_or_config
    else:
        raise ValueError(f"write_adapter_config needs a Placement or a peft.LoraConfig, got "
                         f"{type(placement_or_config).__name__}; build one with select_placement(...)")
    if model is not None and placement is not None:
        placement.check_targets(config, model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".adapter_config.") as tmp:
        config.save_pretrained(tmp)
        data = json.loads((Path(tmp) / CONFIG_NAME).read_text())
    order = [c.name for c in placement.candidates] if placement is not None else []
    for key in ("target_modules", "target_parameters"):
        if isinstance(data.get(key), list):
            data[key] = _ordered(data[key], order)
    paths = {"adapter_config": atomic_write_text(folder / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True)),
             "targets": atomic_write_text(folder / SUMMARY_NAME, targets_markdown(config, placement))}
    return paths


def _layers_text(layers: list[int]) -> str:
    runs: list[list[int]] = []
    for x in sorted(set(layers)):
        if runs and runs[-1][1] == x - 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _relative(name: str, layer: int) -> tuple[str, str]:
    """(prefix, rest) around the layer index: ('model.layers', 'self_attn.q_proj'); ('', name) if none."""
    comps = name.split(".")
    if str(layer) in comps:
        i = comps.index(str(layer))
        return ".".join(comps[:i]), ".".join(comps[i + 1:])
    return "", name


def targets_markdown(config, placement: Placement | None = None) -> str:
    """The human summary written as `targets.md` (see the module docstring)."""
    import peft

    import plop_core

    tm = config.target_modules
    if isinstance(tm, str):
        how = f"one regex that PEFT full-matches, one branch per module type: `{tm}`"
    else:
        how = f"{len(tm or [])} exact module names (the list in adapter_config.json)"
    lines = ["# LoRA targets", "",
             f"Written by plop {plop_core.__version__} with PEFT {peft.__version__}. `adapter_config.json` next to "
             "this file is PEFT's own format: `LoraConfig.from_pretrained(folder)` reads it.", "",
             f"- base model: `{config.base_model_name_or_path or '-'}`"
             + (f" (revision `{config.revision}`)" if config.revision else ""),
             f"- task_type: {config.task_type or '- (get_peft_model returns a bare PeftModel)'}",
             f"- LoRA: r={config.r}, lora_alpha={config.lora_alpha}, lora_dropout={config.lora_dropout}",
             f"- target_modules: {how}"]
    if config.target_parameters:
        lines.append(f"- target_parameters: {len(config.target_parameters)} packed expert parameters")
    if placement is None:
        if not isinstance(tm, str):
            lines += ["", "## Modules", ""] + [f"- `{n}`" for n in sorted(tm or [])]
        return "\n".join(lines) + "\n"
    base = placement.base_model or {}
    chosen = ", ".join(placement.types)
    nfn = placement.nfn or {}
    lines.insert(5, f"- architecture: {base.get('architecture', '-')}")
    lines.append(f"- placement: {placement.strategy}" + (f", k={placement.k}" if placement.k else "")
                 + f": {chosen}; trainable LoRA parameters at r={config.r}: {placement.trainable_params(config.r):,}")
    if nfn:
        ranked = sorted(nfn, key=lambda t: (nfn[t], TYPE_ORDER.index(t)))
        lines.append("- NFN by type (lowest first; chosen in bold): "
                     + ", ".join(f"**{t} {nfn[t]:.3f}**" if t in placement.types else f"{t} {nfn[t]:.3f}"
                                 for t in ranked))
    by_type: dict[str, list] = {}
    for c in placement.candidates:
        by_type.setdefault(c.type, []).append(c)
    patterns = placement.target_patterns()
    lines += ["", "## Per type", "", "| type | modules | layers | kind | d_in -> d_out |", "|---|---|---|---|---|"]
    for t, cands in by_type.items():
        shapes = sorted({f"{c.d_in} -> {c.d_out}" + (f" x{c.n_experts} experts" if c.n_experts > 1 else "")
                         for c in cands})
        kinds = sorted({c.kind for c in cands})
        lines.append(f"| {t} | {len(cands)} | {_layers_text([c.layer for c in cands])} | {', '.join(kinds)} | "
                     f"{'; '.join(shapes)} |")
    if patterns:
        lines += ["", "Exact pattern per type (full match):", ""] + [f"- {t}: `{p}`" for t, p in patterns.items()]
    prefixes = {_relative(c.name, c.layer)[0] for c in placement.candidates}
    prefix = prefixes.pop() if len(prefixes) == 1 else ""
    layers = sorted({c.layer for c in placement.candidates})
    lines += ["", "## Per layer", "",
              (f"Module names relative to `{prefix}.<layer>`." if prefix else "Full module names.") + " "
              "Packed experts are parameters (`target_parameters`).", "",
              "| layer | " + " | ".join(by_type) + " |", "|---|" + "---|" * len(by_type)]
    for layer in layers:
        cells = []
        for t in by_type:
            names = [(_relative(c.name, c.layer)[1] if prefix else c.name)
                     for c in by_type[t] if c.layer == layer]
            cells.append("<br>".join(f"`{n}`" for n in names) or "-")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
