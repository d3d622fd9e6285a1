"""Data-parallel scoring: a sample split into shards scored separately (on different workers), merged exactly.

Why: a sweep of one model on many tasks, or one big cell, must use every worker it is given. A module's
NFN is a ratio of sums over sequences, and the scorer keeps, per module and per sequence, the running
sums it needs (`plop_core.nfn`'s module docstring). So a shard's forward passes produce `PartialScores`
(the raw per-sequence sums of its texts, the baselines it used, its token counts), and `merge_scores`
concatenates the shards' sequences in the sample's order, then computes the tables, the bootstrap and the
intervals once, on the merged statistics. `plop_core.nfn.score_nfn` is exactly `merge_scores` of one part.

Sequence order (what the bootstrap resamples): ascending index of the text in the sample, kept texts
only (a text that tokenizes to nothing is dropped and listed in `meta["dropped_empty"]`), whatever the
sharding. Shards are contiguous ranges of texts (`shard_ranges`).

Guarantee: merged scores equal an unsharded run up to float rounding (tested to 1e-6 relative). Every
per-sequence sum depends on its own sequence only (right padding, pads masked), the sums over sequences
run over the same array in the same order, and the bootstrap's resample-count matrix depends only on
(n_sequences, seed), so its resamples pick the same sequences. Only the batching inside a shard (longest
first within the shard) differs, which changes float rounding in the forward pass, not the arithmetic.
Not shardable: the `reference` estimator (its random vectors follow the batch order) and
`include_padding` (the authors' batching averages pads, whose number depends on the batch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from plop_core.baselines import Baseline
from plop_core.nfn_hooks import SA, SB, SB2, SCNT, SR, Unit
from plop_core.stats import bootstrap_modules, bootstrap_types, module_intervals, selection_stability

MODULE_COLUMNS = ["module", "layer", "type", "kind", "d_in", "d_out", "n_tokens", "feature_norm",
                  "baseline_norm", "baseline_se", "nfn", "nfn_se"]
STAT_COLUMNS = ("sum_a", "count", "sum_a_rho", "sum_b", "sum_b2")  # the rows SA, SCNT, SR, SB, SB2 of `stats`
_STAT_ROWS = (SA, SCNT, SR, SB, SB2)
# must agree between the parts of one merge (the rest of a part's meta is merged or listed)
SAME_IN_EVERY_PART = ("estimator", "seed", "n_probe", "max_length", "include_padding", "model")
NOT_SHARDABLE = "scorer.shards > 1 needs the probe or analytic estimator and include_padding false"


@dataclass
class Scores:
    """Result of `score_nfn` / `merge_scores`. DataFrame columns are documented in docs/architecture.md."""

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


@dataclass
class PartialScores:
    """Per-sequence sufficient statistics of texts [start, start + n_texts) of a sample (`nfn.score_partial`)."""

    start: int                      # index in the whole sample of this part's first text
    n_texts: int
    sequence_index: np.ndarray      # (n_kept,) sample indices of the kept texts, ascending
    full_length: np.ndarray         # (n_kept,) tokens before truncation to max_length
    dropped_empty: list[int]        # sample indices of texts that tokenize to nothing
    stats: np.ndarray               # (5, n_units, n_kept) float64: SA, SCNT, SR, SB, SB2 per unit and sequence
    units: list[str]                # unit labels (`unit_label`), the rows of `stats`
    expert_pairs: dict[int, np.ndarray] = field(default_factory=dict)  # packed experts: routed pairs per expert
    baselines: dict[str, Baseline] = field(default_factory=dict)       # rho(W) used (empty for `reference`)
    n_tokens: int = 0
    meta: dict = field(default_factory=dict)

    def to_frame(self) -> tuple[pd.DataFrame, dict]:
        """Rows (one per sequence and unit: the `sequences` table) and the part's JSON metadata."""
        n_units, n_seq = self.stats.shape[1], self.stats.shape[2]
        frame = pd.DataFrame({
            "sequence_index": np.repeat(self.sequence_index.astype(np.int64), n_units),
            "full_length": np.repeat(self.full_length.astype(np.int64), n_units),
            "unit": np.tile(np.arange(n_units, dtype=np.int64), n_seq),
            "module": np.tile(np.asarray(self.units, dtype=object), n_seq),
            **{col: self.stats[row].T.reshape(-1) for col, row in zip(STAT_COLUMNS, _STAT_ROWS)}})
        meta = {"start": self.start, "n_texts": self.n_texts, "dropped_empty": self.dropped_empty,
                "units": self.units, "n_tokens": self.n_tokens, "meta": self.meta,
                "expert_pairs": {str(k): np.asarray(v).tolist() for k, v in self.expert_pairs.items()},
                "baselines": {k: b.to_json() for k, b in self.baselines.items()}}
        return frame, json.loads(json.dumps(meta, default=_plain))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, meta: dict) -> PartialScores:
        """The inverse of `to_frame` (float64 values round-trip exactly through Parquet)."""
        units = list(meta["units"])
        frame = frame.sort_values(["sequence_index", "unit"], kind="stable")
        seq = frame["sequence_index"].to_numpy(np.int64)[::len(units)] if len(frame) else np.zeros(0, np.int64)
        stats = np.zeros((5, len(units), len(seq)), dtype=np.float64)
        for col, row in zip(STAT_COLUMNS, _STAT_ROWS):
            stats[row] = frame[col].to_numpy(np.float64).reshape(len(seq), len(units)).T
        full = frame["full_length"].to_numpy(np.int64)[::len(units)] if len(frame) else np.zeros(0, np.int64)
        return cls(start=int(meta["start"]), n_texts=int(meta["n_texts"]), sequence_index=seq, full_length=full,
                   dropped_empty=[int(i) for i in meta["dropped_empty"]], stats=stats, units=units,
                   expert_pairs={int(k): np.asarray(v, dtype=np.float64) for k, v in meta["expert_pairs"].items()},
                   baselines={k: Baseline.from_json(v) for k, v in meta["baselines"].items()},
                   n_tokens=int(meta["n_tokens"]), meta=dict(meta["meta"]))


def _plain(v):
    return v.item() if hasattr(v, "item") else str(v)


def shard_ranges(n_texts: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of texts, sizes differing by at most one (the first ones larger)."""
    if not isinstance(n_shards, int) or n_shards < 1:
        raise ValueError(f"scorer.shards must be an integer >= 1, got {n_shards!r}")
    if n_shards > n_texts:
        raise ValueError(f"scorer.shards={n_shards} is more than the {n_texts} texts of the sample; "
                         f"lower scorer.shards to at most {n_texts}")
    size, extra = divmod(n_texts, n_shards)
    bounds = np.cumsum([0] + [size + (i < extra) for i in range(n_shards)])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def unit_label(u: Unit) -> str:
    """A scored unit's name: the candidate (`module`, or `module|param` for packed experts) [+ `/part`]."""
    c = u.cand
    name = c.name if c.param is None or c.name.endswith(str(c.param)) else f"{c.name}|{c.param}"
    return name if u.part is None else f"{name}/{u.part}"


def _check_parts(parts: list[PartialScores]) -> list[PartialScores]:
    if not parts:
        raise ValueError("merge_scores needs at least one part (PartialScores of a shard)")
    parts = sorted(parts, key=lambda p: p.start)
    first = parts[0]
    for p in parts[1:]:
        diff = [k for k in SAME_IN_EVERY_PART if p.meta.get(k) != first.meta.get(k)]
        if diff:
            raise ValueError(f"the shards were scored differently ({', '.join(diff)} differ); score every shard "
                             "of a cell with the same model and scorer config")
        if p.units != first.units:
            raise ValueError("the shards scored different modules; score every shard on the same model")
        if json.dumps({k: b.to_json() for k, b in p.baselines.items()}, sort_keys=True) != \
                json.dumps({k: b.to_json() for k, b in first.baselines.items()}, sort_keys=True):
            raise ValueError("the shards used different baselines rho(W): the weights differ between shards")
    expect = 0
    for p in parts:
        if p.start != expect:
            raise ValueError(f"the shards must cover the sample's texts once, in order: a shard starts at text "
                             f"{p.start}, expected {expect}; score the missing or overlapping range")
        expect += p.n_texts
    if len(parts) > 1 and (first.meta.get("estimator") == "reference" or first.meta.get("include_padding")):
        raise ValueError(NOT_SHARDABLE)
    return parts


def _tables(units, stats, base, estimator, expert_pairs):
    """Module and part rows from the summed statistics; per-sequence num/den for the bootstrap.

    Vectorised over units (this is per scoring call, and a call of one short batch feels every millisecond);
    packed-experts units are filled one by one. Element for element the same arithmetic as a per-unit loop."""
    tot = stats.sum(axis=2)  # (5, U)
    n = tot[SCNT]
    real = n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        feature = np.where(real, tot[SA] / n, np.nan)
        if estimator == "reference":
            bnorm = np.where(real, tot[SB] / n, np.nan)
            var = np.where(n > 1, (tot[SB2] - n * bnorm ** 2) / (n - 1), np.nan)
            bse = np.where(n > 1, np.sqrt(np.maximum(var, 0.0) / n), np.nan)
            nfn = np.where(real, tot[SA] / tot[SB], np.nan)
            num, den = stats[SA], stats[SB]
        else:
            bnorm, bse, num = np.full(len(units), np.nan), np.full(len(units), np.nan), stats[SA].copy()
            experts = []
            for u in units:
                b = base[u.cand.name + "|" + str(u.cand.param)]
                rho, se = (b.rho, b.se) if u.part is None else b.parts[u.part]
                if np.ndim(rho) == 0:  # one weight
                    bnorm[u.index], bse[u.index] = float(rho), float(se)
                else:
                    experts.append((u.index, np.asarray(rho), np.asarray(se)))
            nfn = feature / bnorm
            num /= bnorm[:, None]
            for i, rho, se in experts:  # packed experts: mean over routed pairs of a_e / rho_e
                nfn[i] = tot[SR, i] / n[i] if n[i] else np.nan
                bnorm[i] = feature[i] / nfn[i] if n[i] else np.nan
                w = expert_pairs[i] / max(expert_pairs[i].sum(), 1)
                bse[i] = float(bnorm[i] * np.sqrt(np.sum((w * se / rho) ** 2)))
                num[i] = stats[SR, i]
            den = stats[SCNT]
        nfn_se = np.where((bnorm != 0) & np.isfinite(bnorm), nfn * bse / bnorm, np.nan)
    whole = [u.index for u in units if u.part is None]
    pieces = [u for u in units if u.part is not None]

    def columns(sel, us):
        return {"module": [u.cand.name for u in us], "layer": [u.cand.layer for u in us],
                "type": [u.cand.type if u.part is None else u.part for u in us], "kind": [u.cand.kind for u in us],
                "d_in": [u.cand.d_in for u in us],
                "d_out": [u.cand.d_out if u.rows is None else len(u.part_rows) for u in us],
                "n_tokens": n[sel].astype(np.int64), "feature_norm": feature[sel], "baseline_norm": bnorm[sel],
                "baseline_se": bse[sel], "nfn": nfn[sel], "nfn_se": nfn_se[sel]}

    modules = pd.DataFrame(columns(whole, [units[i] for i in whole]), columns=MODULE_COLUMNS)
    sel = [u.index for u in pieces]
    parts = pd.DataFrame({**columns(sel, pieces), "part_of": [u.cand.type for u in pieces]} if pieces else [],
                         columns=MODULE_COLUMNS + ["part_of"])
    return modules, parts, np.ascontiguousarray(num[whole].T), np.ascontiguousarray(den[whole].T)


def _merged_meta(parts: list[PartialScores], n_bootstrap: int, ci_level: float, full_length: np.ndarray) -> dict:
    """One run's meta from its parts: counts summed, events listed per shard, the rest as every part has it."""
    first = parts[0].meta
    many = len(parts) > 1
    backoff = [{**e, "shard": i} if many else e for i, p in enumerate(parts) for e in p.meta.get("oom_backoff", [])]
    devices = list(dict.fromkeys(str(p.meta.get("device")) for p in parts))
    notes = [p.meta.get("pad_token_note") for p in parts if p.meta.get("pad_token_note")]
    max_length = first["max_length"]
    meta = dict(estimator=first["estimator"], seed=first["seed"], n_probe=first["n_probe"], n_bootstrap=n_bootstrap,
                ci_level=ci_level, n_sequences=int(len(full_length)), n_tokens=int(sum(p.n_tokens for p in parts)),
                max_length=max_length, truncated_share=float(np.mean(full_length > max_length)),
                n_texts=int(sum(p.n_texts for p in parts)),
                dropped_empty=[i for p in parts for i in p.dropped_empty],
                include_padding=first["include_padding"], batching=first["batching"], batch_size=first["batch_size"],
                oom_backoff=backoff, dtype=first["dtype"], device=devices[0] if len(devices) == 1 else ",".join(devices),
                pad_token_note=notes[0] if notes else None, model=first["model"],
                weights_provenance=first.get("weights_provenance"), device_map=first.get("device_map"),
                torch_version=first.get("torch_version"), transformers_version=first.get("transformers_version"))
    if many:
        meta["shards"] = len(parts)
    return meta


def merge_scores(parts: list[PartialScores], discovery, n_bootstrap: int = 1000, ci_level: float = 0.95) -> Scores:
    """Scores of the whole sample from its shards' statistics: tables, bootstrap, intervals (see the module
    docstring). `discovery`: the Discovery (or list of Candidate) every part was scored with."""
    parts = _check_parts(list(parts))
    if n_bootstrap < 0 or not 0 < ci_level < 1:
        raise ValueError(f"need n_bootstrap >= 0 and 0 < ci_level < 1, got {n_bootstrap} and {ci_level}")
    cands = list(getattr(discovery, "candidates", discovery))
    units = Unit.build(cands)
    if [unit_label(u) for u in units] != parts[0].units:
        raise ValueError("the shards were scored on other candidates than `discovery`; pass the Discovery they used")
    stats = np.concatenate([p.stats for p in parts], axis=2)
    full_length = np.concatenate([p.full_length for p in parts])
    if stats.shape[2] == 0:
        raise ValueError("every text tokenizes to zero tokens; check the texts and the tokenizer")
    expert_pairs = {}
    for p in parts:
        for i, v in p.expert_pairs.items():
            expert_pairs[i] = expert_pairs.get(i, 0) + np.asarray(v, dtype=np.float64)
    estimator, seed = parts[0].meta["estimator"], parts[0].meta["seed"]
    modules, part_rows, num, den = _tables(units, stats, parts[0].baselines, estimator, expert_pairs)
    present = list(dict.fromkeys(modules["type"]))
    known = list(getattr(discovery, "types", []) or [])
    types = [t for t in known if t in present] + [t for t in present if t not in known]
    rel_se = None
    if estimator == "probe":  # the baseline's Monte Carlo error enters every resample (see plop_core.stats)
        rel_se = (modules["baseline_se"] / modules["baseline_norm"]).to_numpy(dtype=float)
    module_boot = bootstrap_modules(num, den, n_bootstrap, seed, rel_se)
    table, type_boot = bootstrap_types(num, den, modules["type"].tolist(), types, n_bootstrap, ci_level, seed,
                                       module_boot=module_boot)
    low, high = module_intervals(module_boot, ci_level, len(modules))
    modules["nfn_ci_low"], modules["nfn_ci_high"] = low, high
    names = modules["module"].tolist()
    per_sequence = {"modules": names, "sequence_index": np.concatenate([p.sequence_index for p in parts]),
                    "sum_a": stats[SA, :len(names)].T.copy(), "count": stats[SCNT, :len(names)].T.copy(),
                    "num": num, "den": den}
    meta = _merged_meta(parts, n_bootstrap, ci_level, full_length)
    return Scores(modules, part_rows, table, per_sequence, discovery, meta, type_boot)
