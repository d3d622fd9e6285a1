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
)
from plop_core.nfn_hooks import SA, SB, SB2, SCNT, SR, HookCollector, Unit, module_of
from plop_core.stats import bootstrap_types, selection_stability

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
    if estimator == "reference":
        return {}
    identity, out = model_identity(model), {}
    for c in tqdm(cands, desc=f"baselines ({estimator})", disable=not progress, leave=False):
        label = c.name if c.param is None or c.name.endswith(c.param) else f"{c.name}|{c.param}"
        parts = {p.type: torch.as_tensor(p.rows, dtype=torch.long) for p in c.parts}
        key = base = None
        if estimator == "probe":  # the stored parameter is hashed (memoised) before any fp32 copy is made
            mod, leaf = module_of(model, c)
            key = cache_key(identity, label, n_probe, seed, getattr(mod, leaf or "weight"))
            base = cache.get(key)
        if base is None:
            w = discovery_module.get_weight(model, c)
            base = analytic_baseline(w, parts) if estimator == "analytic" else probe_baseline(w, parts, n_probe, seed, label)
            del w
            if key is not None:
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


def score_nfn(model, tokenizer, texts, batch_size=8, max_length=256, estimator="probe", seed=0, n_probe=512,
              n_bootstrap=1000, ci_level=0.95, include_padding=False, candidates=None, baseline_cache=None,
              progress=True) -> Scores:
    """Score every placement candidate of `model` by NFN on `texts`; see the module docstring.

    texts: task samples (>= 64 recommended); each is truncated to `max_length` tokens (share in meta).
    estimator: "probe" (default; rho from `n_probe` seeded unit vectors per weight, cached in
      `baseline_cache`, a dict-like or a directory path), "reference" (the authors' per-token random
      vector; its draws follow the batch order, so it is reproducible for the same call, not across
      batch sizes or devices), "analytic" (||W||_F / sqrt(d_in), an upper bound on rho).
    include_padding: also average over pad positions (the authors' code did); off by default.
    candidates: a Discovery or a list of Candidate; default `discover_candidates(model)`.
    n_bootstrap / ci_level / seed: bootstrap over sequences for the type intervals and `stability`.
    The model is put in eval mode and restored; hooks are removed whatever happens.
    """
    texts = _check_inputs(texts, batch_size, max_length, estimator, n_probe, n_bootstrap, ci_level)
    discovery = _resolve_candidates(model, candidates)
    cands = list(discovery.candidates)
    _refuse_heads(model, cands)
    cache = BaselineCache(baseline_cache)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    was_training = model.training
    model.eval()
    fwd_params = inspect.signature(model.forward).parameters
    extra = {k: v for k, v in (("use_cache", False), ("logits_to_keep", 1)) if k in fwd_params}
    collector = None
    try:
        with torch.no_grad(), _right_padding(tokenizer) as pad_note:
            ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
            full_len = np.array([len(x) for x in ids])
            keep = np.flatnonzero(full_len > 0)  # a text that tokenizes to nothing has nothing to average
            if keep.size == 0:
                raise ValueError("every text tokenizes to zero tokens; check the texts and the tokenizer")
            order = keep[np.argsort(-np.minimum(full_len[keep], max_length), kind="stable")]
            seqs = [ids[i][:max_length] for i in order]
            base = _baselines(model, cands, estimator, n_probe, seed, cache, progress)
            units = Unit.build(cands)
            collector = HookCollector(model, units, estimator, base, seed, len(seqs), device)
            collector.attach()
            n_tokens = 0
            for start in tqdm(range(0, len(seqs), batch_size), desc=f"NFN scoring ({estimator})",
                              disable=not progress, total=-(-len(seqs) // batch_size)):
                batch = tokenizer.pad({"input_ids": seqs[start:start + batch_size]}, padding=True,
                                      return_tensors="pt")
                attn = batch["attention_mask"]
                mask = torch.ones_like(attn, dtype=torch.bool) if include_padding else attn.bool()
                n_tokens += int(mask.sum())
                collector.start_batch(mask.to(device), start)
                model(input_ids=batch["input_ids"].to(device), attention_mask=attn.to(device), **extra)
                bad = collector.end_batch()
                if bad is not None:
                    raise NonFiniteActivationError(
                        f"non-finite values (NaN/inf) in the input or output of module {bad} while scoring in "
                        f"{str(dtype).replace('torch.', '')}; float16 overflows easily: load the model in bfloat16 "
                        "or float32 (ModelSpec.dtype)")
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
    table, type_boot = bootstrap_types(num, den, modules["type"].tolist(), types, n_bootstrap, ci_level, seed)
    names = modules["module"].tolist()
    per_sequence = {"modules": names, "sequence_index": np.sort(keep), "sum_a": stats[SA, :len(names)].T.copy(),
                    "count": stats[SCNT, :len(names)].T.copy(), "num": num, "den": den}
    import transformers

    meta = dict(estimator=estimator, seed=seed, n_probe=n_probe if estimator == "probe" else None,
                n_bootstrap=n_bootstrap, ci_level=ci_level, n_sequences=int(len(seqs)), n_tokens=int(n_tokens),
                max_length=max_length, truncated_share=float(np.mean(full_len[keep] > max_length)),
                n_texts=len(texts), dropped_empty=[int(i) for i in np.flatnonzero(full_len == 0)],
                include_padding=include_padding, batch_size=batch_size, dtype=str(dtype).replace("torch.", ""),
                device=str(device), pad_token_note=pad_note, model=model_identity(model),
                torch_version=torch.__version__, transformers_version=transformers.__version__)
    return Scores(modules, parts, table, per_sequence, discovery, meta, type_boot)
