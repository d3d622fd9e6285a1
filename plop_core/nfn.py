"""NFN scoring engine: forward hooks on the placement candidates, streaming sums, estimators, `Scores`.

What: `score_nfn(model, tokenizer, texts, ...)` runs the model over the texts once (no grad, eval mode)
and returns per-module, per-part and per-type Normalized Feature Norms (see docs/method.md):
a(z) = ||W z|| / ||z|| read from each hook's own output as ||y - b|| / ||z|| (no extra matmul for the
`probe` and `analytic` estimators), averaged over real tokens and divided by the random baseline rho(W).
Why this shape: memory stays flat (per module and per sequence we keep only running sums, never
activations), math is fp32 whatever the model dtype, and the per-sequence sums are the sufficient
statistics from which `plop_core.stats` bootstraps intervals and selection stability with no new forward.

Per-sequence statistics (module m, sequence i): num[i, m] / den[i, m] with sum(num) / sum(den) = NFN.
  probe / analytic: num = sum_t a(z_t) / rho (packed experts: sum over routed pairs of a_e / rho_e),
                    den = number of tokens (pairs);
  reference:        num = sum_t a(z_t), den = sum_t ||W r_t|| (one fresh seeded unit r_t per token).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from plop_core import modules as discovery_module
from plop_core.baselines import (
    ESTIMATORS,
    Baseline,
    BaselineCache,
    analytic_baseline,
    cache_key,
    model_identity,
    probe_baseline,
    weight_id,
)
from plop_core.nfn_hooks import SA, SB, SB2, SCNT, SR, HookCollector, Unit, module_of
from plop_core.offload import placement_summary
from plop_core.stats import bootstrap_modules, bootstrap_types, module_intervals, selection_stability

MODULE_COLUMNS = ["module", "layer", "type", "kind", "d_in", "d_out", "n_tokens", "feature_norm",
                  "baseline_norm", "baseline_se", "nfn", "nfn_se"]


class NonFiniteActivationError(FloatingPointError):
    """A scored module saw NaN/inf in its input or output (typically float16 overflow)."""


@dataclass
class Scores:
    """Result of `score_nfn`. DataFrame columns are documented in docs/architecture.md."""

    modules: pd.DataFrame
    parts: pd.DataFrame
    types: pd.DataFrame
    per_sequence: dict
    discovery: object
    meta: dict
    type_resamples: np.ndarray  # (n_bootstrap, n_types), columns in the order of types["type"]

    def stability(self, k: int = 3, strategy: str = "plop") -> float:
        """Share of bootstrap resamples (over sequences) whose k-set equals the full-sample k-set;
        NaN when scored with n_bootstrap=0 (no resamples kept)."""
        if len(self.type_resamples) == 0:
            return float("nan")
        return selection_stability(self.type_resamples, self.types["nfn"].to_numpy(), k, strategy)


def _check_inputs(texts, batch_size, max_length, estimator, n_probe, n_bootstrap, ci_level):
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got one string; wrap it: [text]")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; pass at least one non-empty string (ideally 64+ task samples)")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not str; format rows to text first")
    if all(not t.strip() for t in texts):
        raise ValueError("all texts are empty or whitespace; check the task's text field / formatting")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
    if estimator == "probe" and n_probe < 2:
        raise ValueError(f"n_probe must be >= 2 (512 is the default), got {n_probe}")
    if n_bootstrap < 0 or not 0 < ci_level < 1:
        raise ValueError(f"need n_bootstrap >= 0 and 0 < ci_level < 1, got {n_bootstrap} and {ci_level}")
    return texts


def _resolve_candidates(model, candidates):
    if candidates is None:
        return discovery_module.discover_candidates(model)
    if hasattr(candidates, "candidates"):
        return candidates
    cands = list(candidates)
    if not cands or not all(isinstance(c, discovery_module.Candidate) for c in cands):
        raise ValueError("candidates must be a Discovery or a non-empty list of Candidate; "
                         "leave it None to discover them")
    return discovery_module.Discovery(candidates=cands)


def _refuse_heads(model, cands):
    heads = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            m = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            m = None
        if m is not None:
            heads.add(id(m))
    for c in cands:
        if id(module_of(model, c)[0]) in heads:
            raise ValueError(f"candidate {c.name} is an embedding or the output head; these are never scored "
                             "(lm_head is the costliest matmul and takes no LoRA placement here); drop it")


@contextmanager
def _right_padding(tokenizer):
    """Pad on the right while scoring (restored after), with eos standing in for a missing pad token.

    Why right: we pass no position_ids, so the model uses its default positions 0..S-1 for every row.
    With right padding each real token keeps position t and (causal attention) never sees a pad token, so
    a sequence's activations do not depend on how much padding its batch needs. With left padding the
    real tokens would be shifted by the pad count and their RoPE positions, hence NFN, would change.
    """
    side, pad, note = tokenizer.padding_side, tokenizer.pad_token, None
    if pad is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first")
        tokenizer.pad_token = tokenizer.eos_token
        note = f"tokenizer had no pad token; used eos {tokenizer.eos_token!r} (pads are masked out)"
    tokenizer.padding_side = "right"
    try:
        yield note
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


def _baselines(model, cands, estimator, n_probe, seed, cache: BaselineCache, progress) -> dict[str, Baseline]:
    """rho(W) of every candidate (and of its parts), from the cache when the weights' identity is known.

    Weights are read one at a time (`get_weight`): offloaded ones tensor by tensor from accelerate's map."""
    if estimator == "reference":
        return {}
    identity, out = model_identity(model), {}
    for c in tqdm(cands, desc=f"baselines ({estimator})", disable=not progress, leave=False):
        label = c.name if c.param is None or c.name.endswith(c.param) else f"{c.name}|{c.param}"
        parts = {p.type: torch.as_tensor(p.rows, dtype=torch.long) for p in c.parts}
        mod, leaf = module_of(model, c)
        pname = f"{c.module_name}.{c.param}" if c.param else f"{c.name}.weight"
        key = cache_key(identity, label, n_probe, seed, weight_id(model, pname, getattr(mod, leaf or "weight")),
                        estimator=estimator)
        base = cache.get(key)
        if base is None:
            w = discovery_module.get_weight(model, c)
            base = analytic_baseline(w, parts) if estimator == "analytic" else probe_baseline(w, parts, n_probe, seed, label)
            del w
            cache.put(key, base)
        out[c.name + "|" + str(c.param)] = base
    return out


def _tables(units, stats, base, estimator, expert_pairs):
    """Module and part rows from the summed statistics; per-sequence num/den for the bootstrap."""
    tot = stats.sum(axis=2)  # (5, U)
    rows, num, den = [], [], []
    for u in units:
        c, i = u.cand, u.index
        n = tot[SCNT, i]
        feature = tot[SA, i] / n if n else np.nan
        if estimator == "reference":
            bnorm = tot[SB, i] / n if n else np.nan
            var = (tot[SB2, i] - n * bnorm ** 2) / (n - 1) if n > 1 else np.nan
            bse = float(np.sqrt(max(var, 0.0) / n)) if n > 1 else np.nan
            nfn = tot[SA, i] / tot[SB, i] if n else np.nan
            s_num, s_den = stats[SA, i], stats[SB, i]
        else:
            b = base[c.name + "|" + str(c.param)]
            rho, se = (b.rho, b.se) if u.part is None else b.parts[u.part]
            if np.ndim(rho) == 0:  # one weight
                nfn, bnorm, bse = feature / float(rho), float(rho), float(se)
                s_num, s_den = stats[SA, i] / float(rho), stats[SCNT, i]
            else:  # packed experts: mean over routed pairs of a_e / rho_e
                nfn = tot[SR, i] / n if n else np.nan
                bnorm = feature / nfn if n else np.nan
                w = expert_pairs[i] / max(expert_pairs[i].sum(), 1)
                bse = float(bnorm * np.sqrt(np.sum((w * se / rho) ** 2)))
                s_num, s_den = stats[SR, i], stats[SCNT, i]
        nfn_se = float(nfn * bse / bnorm) if bnorm and np.isfinite(bnorm) else np.nan
        row = dict(module=c.name, layer=c.layer, type=c.type if u.part is None else u.part, kind=c.kind,
                   d_in=c.d_in, d_out=c.d_out if u.rows is None else len(u.part_rows), n_tokens=int(n),
                   feature_norm=float(feature), baseline_norm=float(bnorm), baseline_se=float(bse),
                   nfn=float(nfn), nfn_se=nfn_se)
        if u.part is not None:
            row["part_of"] = c.type
        rows.append(row)
        if u.part is None:
            num.append(s_num)
            den.append(s_den)
    mod_rows = [r for r in rows if "part_of" not in r]
    part_rows = [r for r in rows if "part_of" in r]
    modules = pd.DataFrame(mod_rows, columns=MODULE_COLUMNS)
    parts = pd.DataFrame(part_rows, columns=MODULE_COLUMNS + ["part_of"])
    return modules, parts, np.stack(num, axis=1), np.stack(den, axis=1)


OOM_ERRORS = (torch.OutOfMemoryError, MemoryError)


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError, MemoryError, or a RuntimeError whose message says the allocator ran out."""
    if isinstance(err, OOM_ERRORS):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def execution_device(model) -> torch.device:
    """Where inputs go: the first accelerator of an accelerate device map, else the first resident parameter."""
    dmap = getattr(model, "hf_device_map", None)
    if dmap:
        for dev in dmap.values():
            if dev not in ("cpu", "disk", "meta"):
                return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
        return torch.device("cpu")
    for p in model.parameters():
        if not p.is_meta:
            return p.device
    return torch.device("cpu")


def _order(ids, full_len, max_length, authors_batches):
    """Sequence order: longest first (least padding), or the given order (the authors' batches)."""
    keep = np.flatnonzero(full_len > 0)  # a text that tokenizes to nothing has nothing to average
    if keep.size == 0:
        raise ValueError("every text tokenizes to zero tokens; check the texts and the tokenizer")
    if authors_batches:
        return keep
    return keep[np.argsort(-np.minimum(full_len[keep], max_length), kind="stable")]


def _forward_all(model, tokenizer, seqs, collector, batch_size, min_batch_size, include_padding, pad_side,
                 device, dtype, extra, progress, estimator):
    """Run every batch; on out-of-memory retry the batch at half the size (down to `min_batch_size`).

    Scores are per-sequence sums, so how sequences are grouped into batches does not change them (probe and
    analytic; the reference estimator's draws follow the batches). Returns (n_tokens, backoff events)."""
    n_tokens, start, size, events = 0, 0, batch_size, []
    bar = tqdm(total=len(seqs), desc=f"NFN scoring ({estimator})", unit="seq", disable=not progress)
    try:
        while start < len(seqs):
            batch = tokenizer.pad({"input_ids": seqs[start:start + size]}, padding=True, return_tensors="pt",
                                  padding_side=pad_side)
            attn = batch["attention_mask"]
            mask = torch.ones_like(attn, dtype=torch.bool) if include_padding else attn.bool()
            collector.start_batch(mask.to(device), start)
            try:
                model(input_ids=batch["input_ids"].to(device), attention_mask=attn.to(device), **extra)
            except (RuntimeError, MemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                collector.rollback()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if size <= min_batch_size:
                    raise MemoryError(
                        f"out of memory scoring a batch of {size} sequence(s) of up to {attn.shape[1]} tokens on "
                        f"{device} even after halving the batch from {batch_size}; lower max_length, or offload the "
                        "model (--device-map auto --max-memory ... --offload-folder ...)") from None
                size = max(min_batch_size, size // 2)
                events.append({"at_sequence": int(start), "batch_size": int(size), "error": type(err).__name__})
                bar.set_postfix_str(f"out of memory: batch size -> {size}")
                continue
            bad = collector.end_batch()
            if bad is not None:
                raise NonFiniteActivationError(
                    f"non-finite values (NaN/inf) in the input or output of module {bad} while scoring in "
                    f"{str(dtype).replace('torch.', '')}; float16 overflows easily: load the model in bfloat16 "
                    "or float32 (ModelSpec.dtype)")
            n_tokens += int(mask.sum())
            done = min(size, len(seqs) - start)
            start += done
            bar.update(done)
    finally:
        bar.close()
    return n_tokens, events


def score_nfn(model, tokenizer, texts, batch_size=8, max_length=256, estimator="probe", seed=0, n_probe=512,
              n_bootstrap=1000, ci_level=0.95, include_padding=False, candidates=None, baseline_cache=None,
              progress=True, min_batch_size=1) -> Scores:
    """Score every placement candidate of `model` by NFN on `texts`; see the module docstring.

    texts: task samples (>= 64 recommended); each is truncated to `max_length` tokens (share in meta).
    estimator: "probe" (default; rho from `n_probe` seeded unit vectors per weight), "reference" (the
      authors' per-token random vector; its draws follow the batch order, so it is reproducible for the
      same call, not across batch sizes or devices), "analytic" (||W||_F / sqrt(d_in), an upper bound on rho).
    baseline_cache: probe/analytic baselines by weight identity: None = $PLOP_HOME/baselines (default),
      a directory path, a dict-like, or False (off).
    include_padding: the authors' batching, for comparison with their numbers: texts batched in the given
      order (not longest-first), padded on the tokenizer's own side, and every position averaged, pads
      included. Their per-batch ratio averaging is not reproduced (we pool tokens), so numbers still differ
      from theirs unless every batch has the same number of positions.
    candidates: a Discovery or a list of Candidate; default `discover_candidates(model)`.
    n_bootstrap / ci_level / seed: bootstrap over sequences (and, for probe, over the baseline's Monte Carlo
      error) for the type and module intervals and `stability`.
    min_batch_size: a batch that runs out of memory is retried at half its size down to this floor.
    Works on models loaded with accelerate offload (device_map / max_memory / offload_folder): weights are
    read while materialized or tensor by tensor from the offload map. The model is put in eval mode and
    restored; hooks are removed whatever happens.
    """
    texts = _check_inputs(texts, batch_size, max_length, estimator, n_probe, n_bootstrap, ci_level)
    if not isinstance(min_batch_size, int) or not 1 <= min_batch_size <= batch_size:
        raise ValueError(f"min_batch_size must be an integer in [1, batch_size={batch_size}], got {min_batch_size!r}")
    discovery = _resolve_candidates(model, candidates)
    cands = list(discovery.candidates)
    _refuse_heads(model, cands)
    cache = BaselineCache(baseline_cache)
    device, dtype = execution_device(model), next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    fwd_params = inspect.signature(model.forward).parameters
    extra = {k: v for k, v in (("use_cache", False), ("logits_to_keep", 1)) if k in fwd_params}
    collector = None
    own_side = tokenizer.padding_side
    try:
        with torch.no_grad(), _right_padding(tokenizer) as pad_note:
            ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
            full_len = np.array([len(x) for x in ids])
            order = _order(ids, full_len, max_length, include_padding)
            keep = np.sort(order)
            seqs = [ids[i][:max_length] for i in order]
            base = _baselines(model, cands, estimator, n_probe, seed, cache, progress)
            units = Unit.build(cands)
            collector = HookCollector(model, units, estimator, base, seed, len(seqs), device)
            collector.attach()
            n_tokens, backoff = _forward_all(model, tokenizer, seqs, collector, batch_size, min_batch_size,
                                             include_padding, own_side if include_padding else "right", device,
                                             dtype, extra, progress, estimator)
            stats = collector.result()
    finally:
        if collector is not None:
            collector.detach()
        model.train(was_training)
    inverse = np.argsort(order, kind="stable")  # back to the order of the (kept) texts
    stats = stats[:, :, inverse]
    modules, parts, num, den = _tables(units, stats, base, estimator, collector.expert_pairs)
    present = list(dict.fromkeys(modules["type"]))
    types = [t for t in getattr(discovery, "types", []) if t in present] + \
        [t for t in present if t not in getattr(discovery, "types", [])]
    rel_se = None
    if estimator == "probe":  # the baseline's Monte Carlo error enters every resample (see plop_core.stats)
        rel_se = (modules["baseline_se"] / modules["baseline_norm"]).to_numpy(dtype=float)
    module_boot = bootstrap_modules(num, den, n_bootstrap, seed, rel_se)
    table, type_boot = bootstrap_types(num, den, modules["type"].tolist(), types, n_bootstrap, ci_level, seed,
                                       module_boot=module_boot)
    low, high = module_intervals(module_boot, ci_level, len(modules))
    modules["nfn_ci_low"], modules["nfn_ci_high"] = low, high
    names = modules["module"].tolist()
    per_sequence = {"modules": names, "sequence_index": keep, "sum_a": stats[SA, :len(names)].T.copy(),
                    "count": stats[SCNT, :len(names)].T.copy(), "num": num, "den": den}
    import transformers

    meta = dict(estimator=estimator, seed=seed, n_probe=n_probe if estimator == "probe" else None,
                n_bootstrap=n_bootstrap, ci_level=ci_level, n_sequences=int(len(seqs)), n_tokens=int(n_tokens),
                max_length=max_length, truncated_share=float(np.mean(full_len[keep] > max_length)),
                n_texts=len(texts), dropped_empty=[int(i) for i in np.flatnonzero(full_len == 0)],
                include_padding=include_padding, batching="given order, tokenizer's padding side (authors)"
                if include_padding else "longest first, right padding, pads masked",
                batch_size=batch_size, oom_backoff=backoff, dtype=str(dtype).replace("torch.", ""),
                device=str(device), pad_token_note=pad_note, model=model_identity(model),
                weights_provenance=(getattr(model, "plop_weights", None) or {}).get("provenance"),
                device_map=placement_summary(model.hf_device_map, model) if getattr(model, "hf_device_map", None) else None,
                torch_version=torch.__version__, transformers_version=transformers.__version__)
    return Scores(modules, parts, table, per_sequence, discovery, meta, type_boot)
