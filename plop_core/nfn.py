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
import weakref
from contextlib import contextmanager

import numpy as np
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
    stamp_views,
    weight_id,
    weight_stamps,
)
from plop_core.nfn_hooks import HookCollector, Unit, module_of
from plop_core.offload import placement_summary
from plop_core.shards import PartialScores, Scores, merge_scores, unit_label

__all__ = ["NonFiniteActivationError", "PartialScores", "Scores", "merge_scores", "score_nfn", "score_partial"]

class NonFiniteActivationError(FloatingPointError):
    """A scored module saw NaN/inf in its input or output (typically float16 overflow)."""


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


_DISCOVERED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (structure stamp, Discovery)


def _structure(named: list) -> tuple:
    """What discovery depends on: every module (name and object) and its weight's shape. A model wrapped or
    edited since (PEFT, a replaced or resized layer) has another stamp. `named`: list(model.named_modules())."""
    return tuple((name, id(m), _weight_shape(m)) for name, m in named)


def _weight_shape(m) -> tuple | None:
    """Shape of `m.weight` when it is a tensor; looked up where nn.Module keeps it, because a `getattr` miss
    on the ~half of modules without a weight (norm-free blocks, activations) raises inside nn.Module."""
    if "weight" in m._parameters:
        w = m._parameters["weight"]
    elif "weight" in m._buffers:
        w = m._buffers["weight"]
    elif "weight" in m.__dict__ or hasattr(type(m), "weight"):  # a plain attribute or a property (parametrize)
        w = getattr(m, "weight", None)
    else:
        return None
    return tuple(w.shape) if isinstance(w, torch.Tensor) else None


def _resolve_candidates(model, candidates, named: list | None = None):
    """The Discovery to score; `named` is the call's one walk of model.named_modules() (taken here if None)."""
    if candidates is None:  # discovered once per model structure (repeated calls from a notebook or benchmark)
        stamp = _structure(list(model.named_modules()) if named is None else named)
        hit = _DISCOVERED.get(model)
        if hit is None or hit[0] != stamp:
            _DISCOVERED[model] = hit = (stamp, discovery_module.discover_candidates(model))
        return hit[1]
    if hasattr(candidates, "candidates"):
        return candidates
    cands = list(candidates)
    if not cands or not all(isinstance(c, discovery_module.Candidate) for c in cands):
        raise ValueError("candidates must be a Discovery or a non-empty list of Candidate; "
                         "leave it None to discover them")
    return discovery_module.Discovery(candidates=cands)


def _refuse_heads(model, cands, index=None):
    heads = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            m = getattr(model, getter)()
        except (AttributeError, NotImplementedError):
            m = None
        if m is not None:
            heads.add(id(m))
    for c in cands:
        if id(module_of(model, c, index)[0]) in heads:
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


_BASELINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {settings: (weights, views, stamps, out)}


def _baselines(model, cands, estimator, n_probe, seed, cache: BaselineCache, progress,
               index=None) -> dict[str, Baseline]:
    """rho(W) of every candidate (and of its parts), from the cache when the weights' identity is known.

    Weights are read one at a time (`get_weight`): offloaded ones tensor by tensor from accelerate's map.
    With a directory cache (the default), the last answer per model and settings is also kept in memory
    while every weight's stamp is unchanged (one fused check, ~2 ms): a notebook's or sweep's repeated
    calls skip 210 file reads. A dict-like cache is always consulted (its entries are the caller's)."""
    if estimator == "reference":
        return {}
    identity, out, todo = model_identity(model), {}, []
    for c in cands:
        mod, leaf = module_of(model, c, index)
        label = c.name if c.param is None or c.name.endswith(c.param) else f"{c.name}|{c.param}"
        todo.append((c, label, f"{c.module_name}.{c.param}" if c.param else f"{c.name}.weight",
                     getattr(mod, leaf or "weight")))
    weights = [t[3] for t in todo]
    settings = (estimator, n_probe, seed, identity, str(cache.dir), tuple(t[1] for t in todo))
    kept = (_BASELINES.get(model) or {}).get(settings) if cache.dir is not None else None
    same = kept is not None and len(kept[0]) == len(weights) and all(a is b for a, b in zip(kept[0], weights))
    views = kept[1] if same else stamp_views(weights)  # views share storage: they see in-place edits
    stamps = weight_stamps(weights, views)
    if same and kept[2] == stamps:
        return dict(kept[3])
    for (c, label, pname, weight), stamp in tqdm(list(zip(todo, stamps)), desc=f"baselines ({estimator})",
                                                 disable=not progress, leave=False):
        key = cache_key(identity, label, n_probe, seed, weight_id(model, pname, weight, stamp), estimator=estimator)
        base = cache.get(key)
        if base is None:
            parts = {p.type: torch.as_tensor(p.rows, dtype=torch.long) for p in c.parts}
            w = discovery_module.get_weight(model, c)
            base = analytic_baseline(w, parts) if estimator == "analytic" else probe_baseline(w, parts, n_probe, seed, label)
            del w
            cache.put(key, base)
        out[c.name + "|" + str(c.param)] = base
    if cache.dir is not None:
        _BASELINES.setdefault(model, {})[settings] = (weights, views, stamps, dict(out))
    return out


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
    One call is one part: `merge_scores([score_partial(...)])`; shards of a sample scored by several calls
    of `score_partial` merge into the same scores (plop_core.shards).
    """
    _check_inputs(texts, batch_size, max_length, estimator, n_probe, n_bootstrap, ci_level)
    named = list(model.named_modules())  # one walk serves discovery's stamp, the module index and eval mode
    discovery = _resolve_candidates(model, candidates, named)
    part = _score_partial(model, tokenizer, texts, named, start=0, batch_size=batch_size, max_length=max_length,
                          estimator=estimator, seed=seed, n_probe=n_probe, include_padding=include_padding,
                          candidates=discovery, baseline_cache=baseline_cache, progress=progress,
                          min_batch_size=min_batch_size)
    return merge_scores([part], discovery, n_bootstrap=n_bootstrap, ci_level=ci_level)


def score_partial(model, tokenizer, texts, *, start=0, batch_size=8, max_length=256, estimator="probe", seed=0,
                  n_probe=512, include_padding=False, candidates=None, baseline_cache=None, progress=True,
                  min_batch_size=1) -> PartialScores:
    """The forward passes of `score_nfn` over `texts`, which are texts [start, start + len(texts)) of a sample:
    per-sequence statistics, no tables or bootstrap yet (`merge_scores` of all shards does those once).
    Arguments as in `score_nfn`. A shard whose texts all tokenize to nothing has no sequences (allowed)."""
    return _score_partial(model, tokenizer, texts, list(model.named_modules()), start=start, batch_size=batch_size,
                          max_length=max_length, estimator=estimator, seed=seed, n_probe=n_probe,
                          include_padding=include_padding, candidates=candidates, baseline_cache=baseline_cache,
                          progress=progress, min_batch_size=min_batch_size)


def _score_partial(model, tokenizer, texts, named, *, start, batch_size, max_length, estimator, seed, n_probe,
                   include_padding, candidates, baseline_cache, progress, min_batch_size) -> PartialScores:
    """`score_partial` given the call's walk of model.named_modules()."""
    texts = _check_inputs(texts, batch_size, max_length, estimator, n_probe, 0, 0.5)
    if not isinstance(min_batch_size, int) or not 1 <= min_batch_size <= batch_size:
        raise ValueError(f"min_batch_size must be an integer in [1, batch_size={batch_size}], got {min_batch_size!r}")
    discovery = _resolve_candidates(model, candidates, named)
    cands = list(discovery.candidates)
    index = dict(named)
    _refuse_heads(model, cands, index)
    cache = BaselineCache(baseline_cache)
    device, dtype = execution_device(model), next(model.parameters()).dtype
    training = [m for _, m in named if m.training]  # restored per module; no eval() walk when already eval
    if training:
        model.eval()
    fwd_params = inspect.signature(model.forward).parameters
    extra = {k: v for k, v in (("use_cache", False), ("logits_to_keep", 1)) if k in fwd_params}
    collector, n_tokens, backoff = None, 0, []
    own_side = tokenizer.padding_side
    units = Unit.build(cands)
    try:
        with torch.no_grad(), _right_padding(tokenizer) as pad_note:
            ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
            full_len = np.array([len(x) for x in ids])
            order = _order(ids, full_len, max_length, include_padding)
            keep = np.sort(order)
            seqs = [ids[i][:max_length] for i in order]
            base = _baselines(model, cands, estimator, n_probe, seed, cache, progress, index)
            collector = HookCollector(model, units, estimator, base, seed, len(seqs), device, index)
            if seqs:
                collector.attach()
                n_tokens, backoff = _forward_all(model, tokenizer, seqs, collector, batch_size, min_batch_size,
                                                 include_padding, own_side if include_padding else "right", device,
                                                 dtype, extra, progress, estimator)
            stats = collector.result()
    finally:
        if collector is not None:
            collector.detach()
        for m in training:
            m.training = True
    stats = stats[:, :, np.argsort(order, kind="stable")]  # back to the order of the (kept) texts
    import transformers

    meta = dict(estimator=estimator, seed=seed, n_probe=n_probe if estimator == "probe" else None,
                max_length=max_length, include_padding=include_padding,
                batching="given order, tokenizer's padding side (authors)" if include_padding
                else "longest first, right padding, pads masked",
                batch_size=batch_size, oom_backoff=backoff, dtype=str(dtype).replace("torch.", ""),
                device=str(device), pad_token_note=pad_note, model=model_identity(model),
                weights_provenance=(getattr(model, "plop_weights", None) or {}).get("provenance"),
                device_map=placement_summary(model.hf_device_map, model) if getattr(model, "hf_device_map", None) else None,
                torch_version=torch.__version__, transformers_version=transformers.__version__)
    return PartialScores(start=int(start), n_texts=len(texts), sequence_index=keep.astype(np.int64) + int(start),
                         full_length=full_len[keep].astype(np.int64),
                         dropped_empty=[int(i) + int(start) for i in np.flatnonzero(full_len == 0)],
                         stats=stats, units=[unit_label(u) for u in units],
                         expert_pairs={i: np.asarray(v, dtype=np.float64) for i, v in collector.expert_pairs.items()},
                         baselines=base, n_tokens=int(n_tokens), meta=meta)
