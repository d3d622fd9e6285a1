"""Role inference inside one transformer block, and the exact rows of fused modules' parts.

Why a separate file: `modules.py` finds the blocks and builds candidates; this file holds the rules that
turn a block's linear-like leaves into roles, so they can be read (and extended) in one place.

Rules, in order (each leaf records how its role was found, shown by `Discovery.report()`):
1. section: the first name on the leaf's path that says attention (`attn`, `attention`) or MLP (`mlp`,
   `ffn`, `intermediate`, `experts`, BERT's `output`, ...); else the leaf's own known name; else shapes
   (a leaf reading or writing an intermediate size, i.e. the input size of some module writing the hidden
   size H, is MLP);
2. role from a known leaf name (hints below), accepted only if the shapes agree (q/k/v/qkv/gate/up/gate_up
   read H; o/down write H);
3. structure for the rest: attention: one reader wider than the attention width is a fused qkv, a module
   reading the attention width (or the last H-writer of four) is o, three readers are q, k, v in
   definition order; MLP (per parent module): a module writing H from a non-H input is down, a single
   reader is `up` (or `gate_up` if it writes twice down's input), two readers are gate then up (definition
   order). Anything else is left out with the reason, and the user can pass overrides.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace

from torch import nn

from plop_core.module_types import FUSED_TYPES, READS_HIDDEN, TYPE_ORDER, WRITES_HIDDEN, Part  # noqa: F401 (re-exported)

ATTN_HINTS = {
    "q": {"q_proj", "q", "query", "wq", "q_lin", "to_q", "query_proj"},
    "k": {"k_proj", "k", "key", "wk", "k_lin", "to_k", "key_proj"},
    "v": {"v_proj", "v", "value", "wv", "v_lin", "to_v", "value_proj"},
    "qkv": {"qkv_proj", "qkv", "c_attn", "query_key_value", "wqkv", "w_pack", "in_proj", "qkv_lin"},
    "o": {"o_proj", "o", "out_proj", "wo", "out_lin", "to_out", "c_proj", "dense", "output_proj", "proj", "out"},
}
MLP_HINTS = {
    "gate": {"gate_proj", "w1", "wi_0", "gate", "ffn_gate"},
    "up": {"up_proj", "w3", "wi_1", "wi", "fc1", "c_fc", "dense_h_to_4h", "fc_in", "up", "lin1"},
    "gate_up": {"gate_up_proj", "w13", "w12", "gate_up"},
    "down": {"down_proj", "w2", "wo", "fc2", "c_proj", "dense_4h_to_h", "fc_out", "down", "lin2"},
}
_ATTN_PATH = re.compile(r"attn|attention", re.I)
_MLP_PATH = re.compile(r"mlp|ffn|feed_?forward|intermediate|experts?$|moe|^output$|densereludense|^ff$", re.I)
# fused qkv layouts: "grouped" = per group [q x (heads/groups), k, v] each head_dim rows (GPT-NeoX style)
_PER_HEAD_QKV = {"gpt_neox", "gpt_neox_japanese", "bloom", "persimmon", "minimax"}


@dataclass(eq=False)
class Leaf:
    """A linear-like leaf of a block (identity-hashed)."""

    name: str
    rel: str
    leaf: str
    kind: str
    d_in: int
    d_out: int
    n_experts: int = 1
    param: str | None = None
    forced: str | None = None
    section: str = ""

    @property
    def parent(self) -> str:
        return self.rel.rsplit(".", 1)[0] if "." in self.rel else ""


@dataclass(frozen=True)
class ModelDims:
    """Sizes read from the config (text config for multimodal models); None when unknown."""

    hidden: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    n_experts: int | None = None
    model_type: str = ""
    qkv_groups: int | None = None  # None: contiguous [q | k | v]; G: G groups of [q.., k, v] (per-head layouts)
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def attn_width(self) -> int | None:
        return self.n_heads * self.head_dim if self.n_heads and self.head_dim else None

    @property
    def qkv_width(self) -> int | None:
        if self.n_heads and self.n_kv_heads and self.head_dim:
            return (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
        return None

    def with_hidden_from(self, leaves: list[Leaf]) -> ModelDims:
        """Trust the config's hidden size only if some leaf of the first block reads it."""
        ins = Counter(lf.d_in for lf in leaves)
        if not ins or (self.hidden is not None and self.hidden in ins):
            return self
        guess = ins.most_common(1)[0][0]
        return replace(self, hidden=guess, notes=self.notes + (
            f"hidden size {guess} inferred as the most common input size (config says {self.hidden})",))


def _first(cfg, *names):
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def model_dims(model: nn.Module) -> ModelDims:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return ModelDims()
    if hasattr(cfg, "get_text_config"):
        try:
            cfg = cfg.get_text_config() or cfg
        except Exception:  # noqa: BLE001 - odd remote configs: fall back to the top config
            pass
    mt = str(getattr(cfg, "model_type", "") or "")
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model", "dim", "embed_dim")
    nh = _first(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
    nkv = _first(cfg, "num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num") or nh
    hd = _first(cfg, "head_dim", "attention_head_size") or (hidden // nh if hidden and nh else None)
    n_exp = _first(cfg, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
    groups = None
    multi_query = bool(getattr(cfg, "multi_query", False))
    if mt == "falcon":
        if getattr(cfg, "new_decoder_architecture", False):
            groups = nkv
        elif multi_query:
            nkv = 1
        else:
            groups, nkv = nh, nh
    elif mt == "gpt_bigcode":
        nkv, groups = (1, None) if multi_query else (nh, nh)
    elif mt in _PER_HEAD_QKV:
        nkv, groups = nh, nh
    elif multi_query:
        nkv = 1
    return ModelDims(hidden, nh, nkv, hd, n_exp, mt, groups)


# ----------------------------------------------------------------------------------------------------------


def _hint(lf: Leaf, table: dict[str, set[str]]) -> str | None:
    low = lf.leaf.lower()
    for typ, names in table.items():
        if low in names:
            return typ
    return None


def _fits(typ: str, lf: Leaf, H: int | None) -> bool:
    if H is None:
        return True
    if typ in READS_HIDDEN:
        return lf.d_in == H
    return lf.d_out == H


def _section(lf: Leaf, inter: set[int], dims: ModelDims) -> str:
    for tok in lf.rel.split(".")[:-1]:
        if tok.isdigit():
            continue
        if _ATTN_PATH.search(tok):
            return "attn"
        if _MLP_PATH.search(tok):
            return "mlp"
    if _hint(lf, ATTN_HINTS) and not _hint(lf, MLP_HINTS):
        return "attn"
    if _hint(lf, MLP_HINTS) and not _hint(lf, ATTN_HINTS):
        return "mlp"
    if lf.kind in ("experts", "expert"):
        return "mlp"
    if lf.d_in in inter or lf.d_out in inter or (lf.d_out % 2 == 0 and lf.d_out // 2 in inter):
        return "mlp"
    return "attn"


def assign_roles(leaves: list[Leaf], dims: ModelDims):
    """Roles of one block's leaves: ({leaf: (type, how)}, [(leaf, reason)], [notes])."""
    H = dims.hidden
    roles: dict[Leaf, tuple[str, str]] = {}
    notes: list[str] = []
    rest = []
    for lf in leaves:
        if lf.forced:
            roles[lf] = (lf.forced, "override")
        else:
            rest.append(lf)
    inter = {lf.d_in for lf in rest if lf.d_out == H and lf.d_in != H and lf.d_in != dims.attn_width}
    for lf in rest:
        lf.section = _section(lf, inter, dims)
    attn = [lf for lf in rest if lf.section == "attn"]
    mlp = [lf for lf in rest if lf.section == "mlp"]
    unassigned: list[tuple[Leaf, str]] = []
    _attention_roles(attn, dims, roles, unassigned, notes)
    groups: dict[tuple[str, str], list[Leaf]] = {}
    for lf in mlp:
        groups.setdefault((lf.kind == "experts" and "packed" or "modules", lf.parent), []).append(lf)
    for grp in groups.values():
        _mlp_roles(grp, dims, roles, unassigned, notes, mlp)
    return roles, unassigned, notes


def _by_hint(group: list[Leaf], table, H, roles) -> list[Leaf]:
    left = []
    for lf in group:
        typ = _hint(lf, table)
        if typ and _fits(typ, lf, H):
            roles[lf] = (typ, f"name {lf.leaf!r}")
        else:
            left.append(lf)
    return left


def _attention_roles(attn: list[Leaf], dims: ModelDims, roles, unassigned, notes) -> None:
    H, aw, qw = dims.hidden, dims.attn_width, dims.qkv_width
    left = _by_hint(attn, ATTN_HINTS, H, roles)
    if not left:
        return
    have = {roles[lf][0] for lf in attn if lf in roles}
    fused = [lf for lf in left if lf.d_in == H and (lf.d_out == qw or lf.d_out > max(H or 0, aw or 0))]
    if "qkv" not in have and not have & {"q", "k", "v"} and len(fused) == 1:
        roles[fused[0]] = ("qkv", "shape: one wide module reads the hidden size")
        left.remove(fused[0])
        have.add("qkv")
    if "o" not in have:
        writers = [lf for lf in left if lf.d_out == H]
        o = None
        if aw and aw != H:  # o is the only module reading the attention width
            w = [lf for lf in writers if lf.d_in == aw]
            o = w[0] if len(w) == 1 else None
        elif "qkv" in have or {"q", "k", "v"} <= have:
            o = writers[0] if len(writers) == 1 else None
        elif len(left) == 4 and left[-1].d_out == H:
            o = left[-1]  # q, k, v then o, in definition order
        if o is not None:
            roles[o] = ("o", "shape: reads the attention output, writes the hidden size")
            left.remove(o)
            have.add("o")
    need = [] if "qkv" in have else [t for t in ("q", "k", "v") if t not in have]
    readers = [lf for lf in left if lf.d_in == H]
    if need and len(readers) == len(need):
        for t, lf in zip(need, readers):
            roles[lf] = (t, "definition order (no name hint)")
            left.remove(lf)
        notes.append("attention projections told apart by definition order (q, k, v); check the report or "
                     "pass overrides")
    for lf in left:
        unassigned.append((lf, f"attention module {lf.leaf!r} ({lf.d_in}->{lf.d_out}) has no unambiguous role; "
                               "pass overrides={...: type} to place it"))


def _mlp_roles(group: list[Leaf], dims: ModelDims, roles, unassigned, notes, section) -> None:
    H = dims.hidden
    left = _by_hint(group, MLP_HINTS, H, roles)
    downs = [lf for lf in group if roles.get(lf, ("",))[0] == "down"]
    for lf in list(left):
        if lf.d_out == H and lf.d_in != H:
            roles[lf] = ("down", "shape: reads the intermediate size, writes the hidden size")
            downs.append(lf)
            left.remove(lf)
    have = {roles[lf][0] for lf in group if lf in roles}
    readers = [lf for lf in left if lf.d_in == H]
    if not downs:  # BERT-like: the down projection sits in a sibling module
        downs = [lf for lf in section if lf.d_out == H and lf.d_in != H and lf not in group]
    ref = {d.d_in for d in downs}
    missing = [t for t in ("gate", "up") if t not in have] if "gate_up" not in have else []
    if len(readers) == 1 and missing == ["gate", "up"]:
        lf = readers[0]
        typ = "gate_up" if any(lf.d_out == 2 * i for i in ref) else "up"
        roles[lf] = (typ, "shape: writes twice the down input" if typ == "gate_up" else "shape: single input projection")
        left.remove(lf)
    elif readers and len(readers) == len(missing):
        for t, lf in zip(missing, readers):
            roles[lf] = (t, "definition order (no name hint)")
            left.remove(lf)
        if len(readers) > 1:
            notes.append("MLP gate/up told apart by definition order (gate first); check the report or pass overrides")
    for lf in left:
        unassigned.append((lf, f"MLP module {lf.leaf!r} ({lf.d_in}->{lf.d_out}) has no unambiguous role; "
                               "pass overrides={...: type} to place it"))


# ----------------------------------------------------------------------------------------------------------


def fused_parts(typ: str, lf: Leaf, dims: ModelDims, owner: nn.Module | None):
    """(parts, note) of a fused module: exact output rows of q/k/v or gate/up."""
    n = lf.d_out
    if typ == "gate_up":
        if n % 2:
            return (), f"{lf.name}: gate_up with odd width {n}; parts unknown"
        mod = _owner_module(lf, owner)
        if mod is not None and getattr(mod, "is_concatenated", True) is False:
            return (_part("gate", range(0, n, 2)), _part("up", range(1, n, 2))), None
        return (_part("gate", range(n // 2)), _part("up", range(n // 2, n))), None
    nh, nkv, hd = dims.n_heads, dims.n_kv_heads, dims.head_dim
    if not (nh and nkv and hd and (nh + 2 * nkv) * hd == n):
        if n % 3:
            return (), f"{lf.name}: fused qkv of width {n} does not fit the config's heads; parts unknown"
        t = n // 3
        return (_part("q", range(t)), _part("k", range(t, 2 * t)), _part("v", range(2 * t, n))), \
            f"{lf.name}: qkv width does not fit the config's heads; parts taken as equal thirds"
    if dims.qkv_groups:
        g = dims.qkv_groups
        per = nh // g
        q, k, v = [], [], []
        for i in range(g):
            base = i * (per + 2) * hd
            q += range(base, base + per * hd)
            k += range(base + per * hd, base + (per + 1) * hd)
            v += range(base + (per + 1) * hd, base + (per + 2) * hd)
        return (_part("q", q), _part("k", k), _part("v", v)), None
    qn, kn = nh * hd, nkv * hd
    return (_part("q", range(qn)), _part("k", range(qn, qn + kn)), _part("v", range(qn + kn, n))), None


def _part(t, rows):
    return Part(t, tuple(int(r) for r in rows))


def _owner_module(lf: Leaf, owner: nn.Module | None):
    if owner is None or lf.param is None:
        return None
    try:
        return owner.get_submodule(lf.rel[: -len(lf.param) - 1])
    except AttributeError:
        return None


# ----------------------------------------------------------------------------------------------------------
# overrides (a user map wins over every rule)


def check_overrides(overrides: dict[str, str] | None) -> dict[str, str]:
    if not overrides:
        return {}
    valid = set(TYPE_ORDER) | {"skip"}
    out = {}
    for key, val in overrides.items():
        if val not in valid:
            raise ValueError(f"override {key!r} -> {val!r}: unknown type; use one of {sorted(valid)}")
        try:
            re.compile(key)
        except re.error as e:
            raise ValueError(f"override key {key!r} is neither a leaf name nor a valid regex ({e}); "
                             "escape special characters, e.g. re.escape(name)") from None
        out[key] = val
    return out


def override_for(lf_full: str, lf_rel: str, lf_leaf: str, overrides: dict[str, str]) -> str | None:
    for key in overrides:
        if key in (lf_leaf, lf_rel, lf_full) or re.fullmatch(key, lf_full) or re.fullmatch(key, lf_rel):
            return key
    return None
