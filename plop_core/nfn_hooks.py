"""Forward hooks of the NFN scorer: per-module, per-sequence running sums of a(z), tokens and baselines.

Why a module of its own: the hooks are the hot path of scoring. They read a(z) = ||W z|| / ||z|| from
the module's own input and output (fp32 norms via `torch.linalg.vector_norm(..., dtype=float32)`, no
extra matmul, no `.item()` sync, no Python loop over tokens) and add per-sequence sums into one device
tensor `stats[stat, unit, sequence]`. A *unit* is a candidate module or one part (output-row block) of
a fused module, so parts cost one extra row-slice norm each.

Hot path: a hook writes one row-norm per unit (and one per distinct input: q/k/v and gate/up share one)
into per-batch buffers allocated once per batch shape; division by ||z||, the padding mask and the
per-sequence sums happen once per batch for all units together (`end_batch`). Counts are per call: a
module called twice in one forward counts its tokens twice, a module that did not fire counts none.

Bias: ||W z|| = ||y - b||. In fp32/fp64 the subtraction is exact enough; in bf16/fp16 a large bias (Qwen2's
qkv bias can be 300x ||W z||) swamps W z in the rounded output, so there the hook recomputes W z without
the bias (one extra matmul for biased modules in low precision only).

Offload: hooks go through `plop_core.offload.attach_inside`, which composes with accelerate's own hooks
so that weights (bias, experts, the reference estimator's W) are read while materialized.

Packed MoE experts (kind "experts", e.g. Mixtral's `mlp.experts` holding gate_up_proj (E, 2I, H) and
down_proj (E, H, I)) have no per-expert module to hook: the hook sits on the experts module and
recomputes each routed (token, expert) pair's projections from the routing it receives (top_k_index),
following transformers' `use_experts_implementation` conventions (has_gate, has_bias, is_transposed,
`_apply_gate`). That doubles the experts' FLOPs, and only theirs.

The `reference` estimator (the authors' method) draws one seeded unit vector per real token and computes
||W r|| in fp32 (the weight upcast, whatever the model dtype), as the scoring math is documented.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from plop_core.baselines import derive_seed
from plop_core.modules import orient
from plop_core.offload import attach_inside

SA, SCNT, SR, SB, SB2 = range(5)  # sum a(z), token count, sum a/rho (experts), sum ||W r||, sum ||W r||^2
_TINY = 1e-30


def module_of(model: torch.nn.Module, cand, index: dict | None = None) -> tuple[torch.nn.Module, str | None]:
    """(module to hook, packed-parameter leaf name or None) for a candidate. `index`: the model's
    `dict(named_modules())`, built once per call (get_submodule walks every level, 4 times per candidate)."""
    try:
        mod = index[cand.name] if index is not None and cand.name in index else model.get_submodule(cand.name)
        leaf = cand.param.rpartition(".")[2] if cand.kind == "experts" and cand.param else None
        return mod, leaf
    except AttributeError:
        parent, _, leaf = cand.name.rpartition(".")
        try:
            mod = model.get_submodule(parent)
        except AttributeError:
            mod = None
        if mod is not None and isinstance(getattr(mod, leaf, None), torch.nn.Parameter):
            return mod, leaf
        raise ValueError(f"candidate {cand.name!r} names no module of this model; rediscover candidates "
                         "on this model (plop_core.modules.discover_candidates)") from None


def _rows(rows: tuple[int, ...]):
    """A slice when the rows are one ascending run (cheap view), else an index tensor."""
    if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return torch.as_tensor(rows, dtype=torch.long)


def _take(y: torch.Tensor, rows):
    if rows is None:
        return y
    if isinstance(rows, slice):
        return y[..., rows]
    return y.index_select(-1, rows.to(y.device))


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)


@dataclass
class Unit:
    index: int            # row in stats
    cand: object          # the Candidate
    module_index: int     # index of the candidate (units of the same candidate share it)
    part: str | None = None
    part_rows: tuple | None = None
    rows: object = None   # slice / LongTensor / None
    leaf: str | None = None

    @staticmethod
    def build(cands) -> list[Unit]:
        """Whole-module units first (index == candidate index), then one unit per part."""
        units = [Unit(i, c, i) for i, c in enumerate(cands)]
        for i, c in enumerate(cands):
            for p in c.parts:
                units.append(Unit(len(units), c, i, p.type, tuple(p.rows), _rows(tuple(p.rows))))
        return units


class HookCollector:
    """Registers the hooks, keeps the running sums, and removes the hooks (call `detach` in finally)."""

    def __init__(self, model, units, estimator, baselines, seed, n_seq, device, index: dict | None = None):
        self.model, self.units, self.reference = model, units, estimator == "reference"
        self.index = index  # the model's named modules (module_of)
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64
        self.stats = torch.zeros(5, len(units), n_seq, dtype=acc_dtype, device=device)
        n_mod = max(u.module_index for u in units) + 1
        self.names = [None] * n_mod
        dense = [u for u in units if u.cand.kind != "experts"]
        self.dpos = {u.index: i for i, u in enumerate(dense)}  # unit index -> row in the per-batch buffers
        self.dense = torch.tensor([u.index for u in dense], dtype=torch.long, device=device)
        self.groups: dict[int, tuple[str, torch.nn.Module, list[Unit]]] = {}  # by module identity
        self.expert_pairs: dict[int, np.ndarray] = {}
        self.expert_rho: dict[int, torch.Tensor] = {}
        for u in units:
            mod, leaf = module_of(model, u.cand, index)
            u.leaf = leaf
            self.names[u.module_index] = u.cand.name
            self.groups.setdefault(id(mod), (u.cand.name, mod, []))[2].append(u)
            if u.cand.kind == "experts":
                if not self.reference:
                    b = baselines[u.cand.name + "|" + str(u.cand.param)]
                    rho = b.rho if u.part is None else b.parts[u.part][0]
                    self.expert_rho[u.index] = torch.as_tensor(rho, dtype=torch.float32, device=device)
                self.expert_pairs[u.index] = 0
        self.seed, self.device, self.handles = seed, device, []
        self.generators: dict[str, torch.Generator] = {}
        self.shape = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def attach(self) -> None:
        for key, mod, units in self.groups.values():
            experts = any(u.cand.kind == "experts" for u in units)
            hook = self._experts_hook(key, units) if experts else self._linear_hook(key, units)
            self.handles.append(attach_inside(mod, hook))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def start_batch(self, mask: torch.Tensor, offset: int) -> None:
        self.mask, self.offset, self.all_real = mask, offset, bool(mask.all())
        self.count = mask.sum(1, dtype=torch.float64).to(self.stats.dtype)
        if self.shape != tuple(mask.shape):  # buffers reused across batches of one shape: no per-call allocation
            self.shape = tuple(mask.shape)
            n = len(self.dpos)
            self.ynorm = torch.empty(n, *mask.shape, dtype=torch.float32, device=mask.device)
            self.znorm = torch.empty(max(n, 1), *mask.shape, dtype=torch.float32, device=mask.device)
            self.yrows, self.zrows = list(self.ynorm.unbind(0)), list(self.znorm.unbind(0))  # views made once
        # experts and reference hooks add into `stats` during the forward: keep what to restore on OOM
        self.snapshot = (self.stats[:, :, offset:offset + mask.shape[0]].clone(), dict(self.expert_pairs))
        self.calls = [0] * len(self.dpos)
        self.slot = [0] * len(self.dpos)
        self.n_slots, self.last_input, self.extra = 0, None, None
        if self.reference:
            self.n_real = int(self.count.sum())
            self.real_seq = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]

    def rollback(self) -> None:
        """Undo a batch that failed mid-forward (e.g. out of memory), so it can be retried in smaller pieces."""
        window, pairs = self.snapshot
        self.stats[:, :, self.offset:self.offset + window.shape[2]] = window
        self.expert_pairs = pairs
        self.last_input = self.extra = None

    def end_batch(self) -> str | None:
        """Fold the batch into the totals; name the first module whose sums are NaN/inf, else None.

        A NaN/inf in a module's input or output at a real token propagates into its per-sequence sum,
        so one finiteness test of this batch's sums (one sync per batch) covers every module.
        """
        n_b = self.mask.shape[0]
        window = self.stats[:, :, self.offset:self.offset + n_b]
        fired = [i for i, c in enumerate(self.calls) if c]
        if fired:
            rows = None if len(fired) == len(self.calls) else torch.tensor(fired, device=self.ynorm.device)
            slots = torch.tensor([self.slot[i] for i in fired], device=self.ynorm.device)
            inv_z = self.znorm[:self.n_slots].clamp_min(_TINY).reciprocal_()
            prod = (self.ynorm if rows is None else self.ynorm[rows]) * inv_z[slots]
            if not self.all_real:
                prod = torch.where(self.mask, prod, 0.0)
            sums = prod.sum(-1).to(window.dtype)  # (fired units, batch)
            if self.extra is not None:
                sums += self.extra if rows is None else self.extra[rows]
            target = self.dense if rows is None else self.dense[rows]
            calls = torch.tensor([self.calls[i] for i in fired], dtype=window.dtype, device=window.device)
            window[SA].index_add_(0, target, sums)
            window[SCNT].index_add_(0, target, calls[:, None] * self.count[None, :])
        self.last_input = self.extra = None
        bad = ~torch.isfinite(window).all(dim=2).all(dim=0)
        if not bool(bad.any()):
            return None
        return self.names[self.units[int(bad.nonzero()[0, 0])].module_index]

    def result(self) -> np.ndarray:
        for i, v in self.expert_pairs.items():
            self.expert_pairs[i] = np.asarray(v, dtype=np.float64)
        return self.stats.double().cpu().numpy()

    def _gen(self, name: str, device) -> torch.Generator:
        if name not in self.generators:
            self.generators[name] = torch.Generator(device=device).manual_seed(derive_seed(self.seed, name + "/reference"))
        return self.generators[name]

    def _add(self, stat: int, unit: int, per_seq: torch.Tensor) -> None:
        sl = self.stats[stat, unit, self.offset:self.offset + per_seq.shape[0]]
        sl += per_seq.to(sl.dtype)

    # ---- dense modules (linear, conv1d, fused) --------------------------------------------------------
    def _linear_hook(self, name: str, units: list[Unit]):
        cand = units[0].cand
        plan = [(self.dpos[u.index], u.rows) for u in units]  # (buffer row, output rows) per unit, fixed
        mod0, _ = module_of(self.model, cand, self.index)
        biased = isinstance(getattr(mod0, "bias", None), torch.Tensor)
        simple = len(plan) == 1 and plan[0][1] is None and not biased and not self.reference
        i0 = plan[0][0]
        norm = torch.linalg.vector_norm
        f32 = torch.float32

        def hook(mod, args, kwargs, out):
            x0 = args[0] if args else next(iter(kwargs.values()))
            y = out[0] if isinstance(out, tuple) else out
            if simple and x0.shape[:-1] == self.shape and self.calls[i0] == 0:
                # the common case, kept short (it runs for every module of every batch): one unit, no bias,
                # (batch, seq, d) tensors, first call in this forward
                if x0 is not self.last_input:
                    self.last_input, self.last_slot = x0, self.n_slots
                    norm(x0, dim=-1, dtype=f32, out=self.zrows[self.n_slots])
                    self.n_slots += 1
                norm(y, dim=-1, dtype=f32, out=self.yrows[i0])
                self.slot[i0] = self.last_slot
                self.calls[i0] = 1
                return
            general(mod, x0, y)

        def general(mod, x0, y):
            x = x0
            mask = self.mask
            if x.shape[:-1] != mask.shape and x.shape[:-1].numel() == mask.numel() and y.shape[0] == x.shape[0]:
                x, y = x.reshape(*mask.shape, x.shape[-1]), y.reshape(*mask.shape, y.shape[-1])  # flattened tokens
            if x.shape[:-1] != mask.shape:
                raise RuntimeError(f"module {name} got input of shape {tuple(x.shape)}, not (batch, seq, d_in) with "
                                   f"(batch, seq) = {tuple(mask.shape)}; per-expert modules that receive routed "
                                   "tokens only cannot be scored per sequence; score the packed experts instead")
            if x0 is not self.last_input:  # q/k/v (gate/up) receive the same tensor: one input norm for all
                self.last_input, self.last_slot = x0, self.n_slots
                norm(x, dim=-1, dtype=f32, out=self.zrows[self.n_slots])
                self.n_slots += 1
            k = self.last_slot
            yb = _bias_free(mod, cand, x, y) if biased else y
            calls = self.calls
            for i, rows in plan:
                if calls[i] == 0:
                    norm(y if rows is None and not biased else _take(yb, rows), dim=-1, dtype=f32, out=self.yrows[i])
                    self.slot[i] = k
                else:  # a second call in the same forward: fold it now, counted per call in end_batch
                    a = _norm(_take(yb, rows)) / self.znorm[k].clamp_min(_TINY)
                    a = torch.where(self.mask, a, 0.0).sum(1).to(self.stats.dtype)
                    if self.extra is None:
                        self.extra = torch.zeros(len(self.dpos), mask.shape[0], dtype=self.stats.dtype,
                                                 device=a.device)
                    self.extra[i] += a
                calls[i] += 1
            if self.reference:
                self._reference_dense(name, mod, cand, x, units)
        return hook

    def _reference_dense(self, name, mod, cand, x, units):
        gen = self._gen(name, x.device)
        r = torch.randn(self.n_real, x.shape[-1], generator=gen, device=x.device, dtype=torch.float32)
        r = r / _norm(r).clamp_min(_TINY)[:, None]
        ry = r @ orient(mod.weight, cand, mod).float().T  # fp32 whatever the model dtype; no bias involved
        n_seq = self.mask.shape[0]
        for u in units:
            bn = _norm(_take(ry, u.rows)).to(self.stats.dtype)
            sums = torch.zeros(n_seq, dtype=self.stats.dtype, device=bn.device)
            self._add(SB, u.index, sums.index_add(0, self.real_seq, bn))
            self._add(SB2, u.index, torch.zeros_like(sums).index_add(0, self.real_seq, bn * bn))

    # ---- packed experts --------------------------------------------------------------------------------
    def _experts_hook(self, name: str, units: list[Unit]):
        def hook(mod, args, kwargs, out):
            hidden = args[0] if len(args) > 0 else kwargs["hidden_states"]
            route = args[1] if len(args) > 1 else kwargs["top_k_index"]
            self._experts(name, mod, hidden, route, units)
        return hook

    def _experts(self, name, mod, hidden, route, units):
        has_gate = getattr(mod, "has_gate", hasattr(mod, "gate_up_proj"))
        up_name = "gate_up_proj" if has_gate else "up_proj"
        w_up, w_down = getattr(mod, up_name, None), getattr(mod, "down_proj", None)
        if not isinstance(w_up, torch.Tensor) or not isinstance(w_down, torch.Tensor) or w_up.dim() != 3:
            raise NotImplementedError(f"experts module {name} ({type(mod).__name__}) does not hold packed 3-D "
                                      f"{up_name}/down_proj parameters; this experts layout is not supported yet")
        transposed = getattr(mod, "is_transposed", False)
        has_bias = getattr(mod, "has_bias", False)
        b_up = getattr(mod, up_name + "_bias", None) if has_bias else None
        n_exp = w_up.shape[0]
        mask = self.mask
        n_b, n_s = mask.shape
        if hidden.dim() != 2 or hidden.shape[0] != n_b * n_s:
            raise RuntimeError(f"experts module {name} got hidden states of shape {tuple(hidden.shape)}, expected "
                               f"({n_b * n_s}, hidden) = flattened (batch, seq)")
        tok = torch.arange(n_b * n_s, device=hidden.device)[:, None].expand_as(route)
        valid = mask.reshape(-1)[:, None] & (route >= 0) & (route < n_exp)
        tok, exp = tok[valid], route[valid]
        order = torch.argsort(exp, stable=True)
        tok, exp = tok[order], exp[order]
        counts = torch.bincount(exp, minlength=n_exp)[:n_exp].cpu().numpy()
        n_pairs = int(counts.sum())
        by_leaf = {"up": [u for u in units if u.leaf in ("gate_up_proj", "up_proj")],
                   "down": [u for u in units if u.leaf == "down_proj"]}
        a = {u.index: torch.empty(n_pairs, device=hidden.device) for u in units}
        base = {u.index: torch.empty(n_pairs, device=hidden.device) for u in units} if self.reference else {}
        gen = self._gen(name, hidden.device) if self.reference else None

        def lin(v, w):
            return v @ w if transposed else F.linear(v, w)

        def record(store, group, out, in_norm, sl):
            for u in group:
                store[u.index][sl] = _norm(_take(out, u.rows)) / in_norm

        def unit_random(n, d):
            r = torch.randn(n, d, generator=gen, device=hidden.device, dtype=torch.float32)
            return r / _norm(r).clamp_min(_TINY)[:, None]

        start = 0
        for e in np.flatnonzero(counts):
            sl = slice(start, start + int(counts[e]))
            start = sl.stop
            z = hidden[tok[sl]]
            zn = _norm(z).clamp_min(_TINY)
            h0 = lin(z, w_up[e])
            record(a, by_leaf["up"], h0, zn, sl)
            if by_leaf["down"]:
                h = h0 if b_up is None else h0 + b_up[e]
                act = _activation(mod, h, has_gate)
                record(a, by_leaf["down"], lin(act, w_down[e]), _norm(act).clamp_min(_TINY), sl)
            if self.reference:  # fp32 unit vectors through the fp32 expert weights
                n_e = sl.stop - sl.start
                record(base, by_leaf["up"], lin(unit_random(n_e, z.shape[-1]), w_up[e].float()), 1.0, sl)
                if by_leaf["down"]:
                    d_mid = w_down.shape[-2] if transposed else w_down.shape[-1]
                    record(base, by_leaf["down"], lin(unit_random(n_e, d_mid), w_down[e].float()), 1.0, sl)
        seq = tok // n_s
        zeros = torch.zeros(n_b, dtype=self.stats.dtype, device=hidden.device)
        ones = torch.ones(n_pairs, dtype=self.stats.dtype, device=hidden.device)
        for u in units:
            av = a[u.index].to(self.stats.dtype)
            self._add(SA, u.index, zeros.index_add(0, seq, av))
            self._add(SCNT, u.index, zeros.index_add(0, seq, ones))
            self.expert_pairs[u.index] = self.expert_pairs[u.index] + counts
            if self.reference:
                bv = base[u.index].to(self.stats.dtype)
                self._add(SB, u.index, zeros.index_add(0, seq, bv))
                self._add(SB2, u.index, zeros.index_add(0, seq, bv * bv))
            else:
                ratio = av / self.expert_rho[u.index][exp].to(self.stats.dtype)
                self._add(SR, u.index, zeros.index_add(0, seq, ratio))


def _bias_free(mod, cand, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W z from the module's output y: y - b in fp32/fp64, W z recomputed without bias in low precision."""
    bias = getattr(mod, "bias", None)
    if not isinstance(bias, torch.Tensor):
        return y
    if y.dtype in (torch.float32, torch.float64):
        return y - bias
    return F.linear(x, orient(mod.weight, cand, mod))


def _activation(mod, h: torch.Tensor, has_gate: bool) -> torch.Tensor:
    """The experts' hidden activation (input of down_proj) from the up/gate_up output h (bias included)."""
    if has_gate and hasattr(mod, "_apply_gate"):
        return mod._apply_gate(h)
    if has_gate:  # transformers' default: concatenated [gate; up]
        gate, up = h.chunk(2, dim=-1)
        return mod.act_fn(gate) * up
    return mod.act_fn(h)
