"""Placement candidates: which modules of a transformers model can take LoRA, and what role each plays.

Why: PLoP scores and selects module *types* (q k v o gate up down), but names differ by family (Phi-3
`qkv_proj`, GPT-2 `c_attn` Conv1D, GPT-NeoX `query_key_value`, BERT `query`/`intermediate.dense`,
packed Mixture-of-Experts parameters) and PEFT silently skips what matches nothing. So roles are
inferred from the model, not from a hand list of architectures alone:

1. the layer stack is the largest ModuleList of blocks that hold linear layers (no forward pass);
2. inside each block the linear-like leaves are listed: `nn.Linear` (and subclasses), GPT-2 `Conv1D`
   (weight stored (in, out)), packed expert parameters (3-D, `kind="experts"`), per-expert Linears
   (`kind="expert"`); routers and scalar gates are dropped with a reason;
3. each leaf gets a section (attention / MLP) from the names on its path, else from shapes;
4. then a role: a known leaf name is a hint that must agree with the shapes (q/k/v/gate/up read the
   hidden size H, o/down write H); without a usable hint, shapes and definition order decide
   (`module_roles.py`). Fused modules keep a fused type (`qkv`, `gate_up`) and list the exact output
   rows of each part.

A user override map `{"leaf name | block-relative path | regex on the full name": "type" | "skip"}`
wins over all of this. Output heads, poolers, classifiers and embeddings are never candidates.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from plop_core.module_roles import (
    FUSED_TYPES,
    TYPE_ORDER,
    Leaf,
    ModelDims,
    Part,  # re-exported: discovery records carry Parts
    assign_roles,
    check_overrides,
    fused_parts,
    model_dims,
    override_for,
)
from plop_core.peft_facts import base_model_facts

KINDS = ("linear", "conv1d", "fused", "experts", "expert")

__all__ = ["FUSED_TYPES", "TYPE_ORDER", "KINDS", "Part",
           "Candidate", "Discovery", "discover_candidates", "get_weight"]


@dataclass(frozen=True)
class Candidate:
    """One placement candidate.

    `name` is the exact module name from `model.named_modules()`; for packed experts (`kind="experts"`)
    it is the full *parameter* name (`model.layers.0.mlp.experts.gate_up_proj`), `param` the
    attribute (`gate_up_proj`) and `module_name` the owning module. `kind`: "linear", "conv1d" (GPT-2,
    weight stored (in, out); fused or not), "fused" (a fused nn.Linear), "experts" (packed 3-D
    parameter, `n_experts` matrices), "expert" (one nn.Linear per expert). Fused types (qkv, gate_up)
    list `parts` with exact output rows (non-contiguous for GPT-NeoX).
    """

    name: str
    layer: int
    type: str
    d_in: int
    d_out: int
    kind: str = "linear"
    parts: tuple[Part, ...] = ()
    param: str | None = None
    n_experts: int = 1

    @property
    def module_name(self) -> str:
        return self.name[: -len(self.param) - 1] if self.param else self.name

    @property
    def is_fused(self) -> bool:
        return self.type in FUSED_TYPES

    def lora_params(self, r: int) -> int:
        """Trainable parameters of a rank-r LoRA on this candidate, as PEFT counts them (no bias)."""
        return int(r) * self.n_experts * (self.d_in + self.d_out)

    def to_dict(self) -> dict:
        d = {"name": self.name, "layer": self.layer, "type": self.type, "d_in": self.d_in,
             "d_out": self.d_out, "kind": self.kind, "param": self.param, "n_experts": self.n_experts}
        if self.parts:
            d["parts"] = [{"type": p.type, "runs": [list(r) for r in p.runs()]} for p in self.parts]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        parts = tuple(Part.from_runs(p["type"], p["runs"]) for p in d.get("parts", ()))
        return cls(d["name"], int(d["layer"]), d["type"], int(d["d_in"]), int(d["d_out"]), d.get("kind", "linear"),
                   parts, d.get("param"), int(d.get("n_experts", 1)))


@dataclass
class Discovery:
    """Result of `discover_candidates`: the candidates, what was left out and why, and how roles were found."""

    candidates: list[Candidate]
    unmatched: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stack: str = ""
    n_layers: int = 0
    dims: ModelDims | None = None
    how: dict[str, str] = field(default_factory=dict)  # candidate name -> how its role was found
    base_model: dict = field(default_factory=dict)  # PEFT task type, name, revision (peft_facts.base_model_facts)

    @property
    def types(self) -> list[str]:
        """Placeable types found, in canonical order (q k v qkv o gate up gate_up down)."""
        present = {c.type for c in self.candidates}
        return [t for t in TYPE_ORDER if t in present]

    @property
    def layers(self) -> list[int]:
        return sorted({c.layer for c in self.candidates})

    def by_type(self) -> dict[str, list[Candidate]]:
        out = {t: [] for t in self.types}
        for c in self.candidates:
            out[c.type].append(c)
        return out

    def for_types(self, types) -> list[Candidate]:
        want = set(types)
        return [c for c in self.candidates if c.type in want]

    def report(self) -> str:
        lines = [f"Discovery: layer stack {self.stack or '?'} ({self.n_layers} blocks), "
                 f"hidden size {self.dims.hidden if self.dims else '?'}; {len(self.candidates)} candidates"]
        for t, cands in self.by_type().items():
            shapes = sorted({(c.kind, c.d_in, c.d_out, c.n_experts) for c in cands})
            shape_txt = ", ".join(f"{k} {i}->{o}" + (f" x{e} experts" if e > 1 else "") for k, i, o, e in shapes)
            hows = sorted({self.how.get(c.name, "?") for c in cands})
            lines.append(f"  {t:8s} {len(cands):3d} modules in {len({c.layer for c in cands})} layers  "
                         f"[{shape_txt}]  e.g. {cands[0].name}  ({'; '.join(hows)})")
            if cands[0].parts:
                parts = ", ".join(f"{p.type}: {len(p.rows)} rows in {len(p.runs())} run(s)" for p in cands[0].parts)
                lines.append(f"           parts: {parts}")
        if self.unmatched:
            lines.append(f"  not candidates ({len(self.unmatched)}):")
            reasons = Counter(r for _, r in self.unmatched)
            for reason, n in reasons.most_common():
                example = next(nm for nm, r in self.unmatched if r == reason)
                lines.append(f"    {n:3d} x {reason}  e.g. {example}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# finding linear-like leaves


def _is_conv1d(mod: nn.Module) -> bool:
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf") and getattr(mod, "weight", None) is not None


_EXPERT_IDX = re.compile(r"(^|\.)experts?\.\d+(\.|$)")


def _leaves_of(root: nn.Module, prefix: str, dims: ModelDims) -> list[Leaf]:
    """Linear-like leaves under `root` (names relative to it), in definition order."""
    leaves: list[Leaf] = []
    for rel, mod in root.named_modules():
        if not rel or re.search(r"(^|\.)(lora_[A-Za-z_]+|base_layer)(\.|$)", rel):
            continue
        full = f"{prefix}.{rel}" if prefix else rel
        leaf = rel.rsplit(".", 1)[-1]
        if isinstance(mod, nn.Linear):
            kind = "expert" if _EXPERT_IDX.search(rel) else "linear"
            leaves.append(Leaf(full, rel, leaf, kind, mod.in_features, mod.out_features))
        elif _is_conv1d(mod):
            leaves.append(Leaf(full, rel, leaf, "conv1d", int(mod.weight.shape[0]), int(mod.weight.shape[1])))
        elif "router" in type(mod).__name__.lower():
            w = getattr(mod, "weight", None)
            if isinstance(w, torch.Tensor) and w.dim() == 2:
                leaves.append(Leaf(full, rel, leaf, "router", int(w.shape[1]), int(w.shape[0])))
        else:
            for pname, p in mod.named_parameters(recurse=False):
                if p.dim() == 3:
                    d_out, d_in = _packed_orientation(mod, pname, tuple(p.shape), dims.hidden)
                    leaves.append(Leaf(f"{full}.{pname}", f"{rel}.{pname}", pname, "experts", d_in, d_out,
                                       n_experts=int(p.shape[0]), param=pname))
    return leaves


def _packed_orientation(mod: nn.Module, pname: str, shape: tuple, hidden: int | None) -> tuple[int, int]:
    """(d_out, d_in) of a packed (E, a, b) expert parameter: transformers stores (E, out, in) unless
    the experts module says `is_transposed`; without the flag the hidden size and the name decide."""
    _, a, b = shape
    flag = getattr(mod, "is_transposed", None)
    if flag is not None:
        return (b, a) if flag else (a, b)
    if hidden is not None and a != b:
        writes_hidden = "down" in pname.lower() or pname.lower() in ("w2", "wo")
        if writes_hidden:
            return (a, b) if a == hidden else (b, a)
        return (a, b) if b == hidden else (b, a)
    return a, b


def _is_excluded(lf: Leaf, siblings: set[str], dims: ModelDims) -> str | None:
    """Why a leaf is never a candidate (router, scalar gate), or None."""
    if lf.kind == "router":
        return "router (routes tokens to experts; never a candidate)"
    if lf.kind == "experts":
        return None
    low = lf.leaf.lower()
    if "router" in low or (low in ("gate", "w_gate", "gating") and ("experts" in siblings or "experts" in lf.rel)):
        return "router (routes tokens to experts; never a candidate)"
    if dims.n_experts and lf.d_out == dims.n_experts and dims.hidden and lf.d_in == dims.hidden \
            and ("expert" in lf.rel.lower() or "moe" in lf.rel.lower() or "mlp" in lf.rel.lower()):
        return "router (output size = number of experts; never a candidate)"
    if lf.d_out == 1:
        return "scalar gate (one output; never a candidate)"
    return None


# ----------------------------------------------------------------------------------------------------------
# the layer stack


def _find_stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Outermost ModuleLists whose children are blocks holding linear-like leaves."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if any(name.startswith(f"{s}.") for s, _ in found):
            continue
        first = mod[0]
        if isinstance(first, nn.Linear) or _is_conv1d(first):
            continue
        if any(isinstance(m, nn.Linear) or _is_conv1d(m) or any(p.dim() == 3 for p in m.parameters(recurse=False))
               for m in first.modules()):
            found.append((name, mod))
    return found


def _n_params(mod: nn.Module) -> int:
    return sum(p.numel() for p in mod.parameters())


def _output_modules(model: nn.Module) -> set[str]:
    """Names of output heads and embeddings (never candidates)."""
    heads: set[str] = set()
    ids = {}
    for getter in ("get_output_embeddings", "get_input_embeddings"):
        try:
            m = getattr(model, getter)()
        except (AttributeError, NotImplementedError, TypeError):
            m = None
        if isinstance(m, nn.Module):
            ids[id(m)] = True
    for name, mod in model.named_modules():
        if id(mod) in ids or isinstance(mod, nn.Embedding):
            heads.add(name)
    return heads


# ----------------------------------------------------------------------------------------------------------
# public entry points


def discover_candidates(model: nn.Module, overrides: dict[str, str] | None = None) -> Discovery:
    """All placement candidates of `model` with their canonical (or fused) type; see the module docstring.

    overrides: `{"key": "type" | "skip"}`; a key matches a linear-like module by leaf name, block-relative
    path (`self_attn.q_proj`) or a regex fully matching the full name. Overrides may also name modules
    outside the layer stack (their layer is the first integer in the name). Output heads and embeddings
    can never be candidates. Raises ValueError if nothing is found, or an override matches nothing.
    """
    overrides = check_overrides(overrides)
    dims = model_dims(model)
    heads = _output_modules(model)
    stacks = _find_stacks(model)
    notes: list[str] = []
    unmatched: list[tuple[str, str]] = []
    candidates: list[Candidate] = []
    how: dict[str, str] = {}
    used_keys: set[str] = set()
    stack_name, blocks = "", []
    if stacks:
        stacks.sort(key=lambda s: -_n_params(s[1]))
        stack_name, stack_mod = stacks[0]
        blocks = list(stack_mod)
        for other, mod in stacks[1:]:
            notes.append(f"other block stack {other} ({len(mod)} blocks) not scanned; only the largest "
                         f"stack ({stack_name}) is")
    dims = dims.with_hidden_from([lf for b_i, b in enumerate(blocks[:1])
                                  for lf in _leaves_of(b, f"{stack_name}.{b_i}", dims)])
    notes.extend(dims.notes)
    in_stack: set[str] = set()
    for idx, block in enumerate(blocks):
        prefix = f"{stack_name}.{idx}"
        leaves = _leaves_of(block, prefix, dims)
        children = {n for n, _ in block.named_modules()}
        keep: list[Leaf] = []
        for lf in leaves:
            in_stack.add(lf.name)
            key = override_for(lf.name, lf.rel, lf.leaf, overrides)
            if lf.kind == "router":
                if key is not None and overrides[key] != "skip":
                    raise ValueError(f"override {key!r} names {lf.name}, an MoE router; routers are never "
                                     "placement candidates (remove it from the overrides)")
                used_keys.update([key] if key is not None else [])
                unmatched.append((lf.name, _is_excluded(lf, set(), dims)))
                continue
            if key is not None:
                used_keys.add(key)
                lf.forced = overrides[key]
                if lf.forced == "skip":
                    unmatched.append((lf.name, f"skipped by override {key!r}"))
                    continue
                keep.append(lf)
                continue
            siblings = {n.rsplit(".", 1)[-1] for n in children if n.rsplit(".", 1)[0] == lf.rel.rsplit(".", 1)[0]}
            why = _is_excluded(lf, siblings, dims)
            if why:
                unmatched.append((lf.name, why))
            else:
                keep.append(lf)
        roles, unassigned, block_notes = assign_roles(keep, dims)
        for n in block_notes:
            if n not in notes:
                notes.append(n)
        for lf, (typ, why) in roles.items():
            parts, note = fused_parts(typ, lf, dims, block) if typ in FUSED_TYPES else ((), None)
            if note and idx == 0:
                notes.append(note)
            kind = lf.kind if lf.kind != "linear" or typ not in FUSED_TYPES else "fused"
            candidates.append(Candidate(lf.name, idx, typ, lf.d_in, lf.d_out, kind, parts, lf.param, lf.n_experts))
            how[lf.name] = why
        unmatched.extend((lf.name, reason) for lf, reason in unassigned)
    # linear-like modules outside the stack: overrides may claim them, otherwise they are reported
    for lf in _leaves_of(model, "", dims):
        if lf.name in in_stack:
            continue
        owner = lf.name if lf.param is None else lf.name.rsplit(".", 1)[0]
        key = override_for(lf.name, lf.rel, lf.leaf, overrides)
        if owner in heads:
            if key is not None and overrides[key] != "skip":
                raise ValueError(f"override {key!r} names {lf.name}, an output head/embedding; those are never "
                                 "placement candidates (remove it from the overrides)")
            unmatched.append((lf.name, "output head or embedding (never a candidate)"))
            continue
        if key is not None and overrides[key] != "skip":
            used_keys.add(key)
            m = re.search(r"\.(\d+)(\.|$)", lf.name)
            typ = overrides[key]
            lf.forced = typ
            parts, note = fused_parts(typ, lf, dims, None) if typ in FUSED_TYPES else ((), None)
            if note:
                notes.append(note)
            kind = lf.kind if lf.kind != "linear" or typ not in FUSED_TYPES else "fused"
            candidates.append(Candidate(lf.name, int(m.group(1)) if m else 0, typ, lf.d_in, lf.d_out, kind, parts,
                                        lf.param, lf.n_experts))
            how[lf.name] = f"override {key!r}"
        else:
            if key is not None:
                used_keys.add(key)
            other = next((o for o, _ in stacks[1:] if lf.name.startswith(f"{o}.")), None)
            unmatched.append((lf.name, f"in block stack {other}, not scanned (only the largest stack is)" if other
                              else "outside the repeated layer blocks (head, pooler, classifier or adapter)"))
    unused = [k for k in overrides if k not in used_keys]
    if unused:
        raise ValueError(f"overrides {unused} matched no linear-like module; keys match a leaf name (q_proj), a "
                         f"block-relative path (self_attn.q_proj) or a regex on the full name "
                         f"(model\\.layers\\.\\d+\\.attn\\.wq)")
    disc = Discovery(candidates, unmatched, notes, stack_name, len(blocks), dims, how, base_model_facts(model))
    if not candidates:
        seen = [n for n, _ in unmatched][:8]
        why = ("no ModuleList of repeated blocks holding linear layers was found" if not stacks else
               f"the blocks of {stack_name} hold linear-like modules but none could be given a role")
        raise ValueError(
            f"no placement candidates found: {why}. Linear-like modules seen: {seen or 'none'}. Fix: pass "
            "overrides naming the modules and their types, e.g. discover_candidates(model, overrides="
            "{'wq': 'q', 'wk': 'k', 'wv': 'v', 'wo': 'o', r'.*\\.ffn\\.in': 'up', r'.*\\.ffn\\.out': 'down'}) "
            f"(types: {', '.join(TYPE_ORDER)}, or 'skip').\n{disc.report()}")
    return disc


def get_weight(model: nn.Module, cand: Candidate) -> torch.Tensor:
    """The candidate's weight as fp32 (d_out, d_in); Conv1D transposed; packed experts (E, d_out, d_in).

    Offloaded weights (accelerate keeps them on meta outside their forward) are read tensor by tensor
    from the offload map (`plop_core.offload.read_parameter`), never as a whole state dict."""
    from plop_core.offload import read_parameter

    if cand.param:
        mod = model.get_submodule(cand.module_name)
        w = read_parameter(model, f"{cand.module_name}.{cand.param}").detach()
        return orient(w, cand, mod).float()
    w = read_parameter(model, f"{cand.name}.weight").detach()
    return orient(w, cand, model.get_submodule(cand.name)).float()


def orient(w: torch.Tensor, cand: Candidate, mod: nn.Module) -> torch.Tensor:
    """A view of a stored weight as (d_out, d_in) (packed experts: (E, d_out, d_in)); no copy."""
    if cand.param:
        flag = getattr(mod, "is_transposed", None)
        if tuple(w.shape[1:]) != (cand.d_out, cand.d_in) or (flag and cand.d_in == cand.d_out):
            w = w.transpose(1, 2)
        return w
    if cand.kind == "conv1d" or _is_conv1d(mod):
        w = w.t()
    if tuple(w.shape) != (cand.d_out, cand.d_in):
        raise ValueError(f"{cand.name}: weight shape {tuple(w.shape)} is not (d_out, d_in) = "
                         f"({cand.d_out}, {cand.d_in}); was the model changed after discovery?")
    return w
