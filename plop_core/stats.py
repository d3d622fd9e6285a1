"""Uncertainty of NFN scores: bootstrap over sequences and selection stability, without new forwards.

Why: the paper reports point scores only; its reviewers asked how stable the chosen module types are.
Tokens of one sequence are correlated, so we resample *sequences*. Scoring keeps, per module and per
sequence, a numerator and a denominator (sufficient statistics, see `plop_core.nfn`): a module's NFN on
any multiset of sequences is sum(num) / sum(den) over it. A bootstrap resample is then a row of a
resample-count matrix C (n_bootstrap x n_seq), and all resamples of all modules are two matrix products
C @ num and C @ den (vectorised numpy, no Python loop over resamples).

Baseline Monte Carlo error: the `probe` estimator's rho(W) comes from K random unit vectors, with a
relative standard error of ~0.1-1% at K = 512. Holding it fixed would leave that error out of every
interval and of the selection stability, so each resample also draws each module's baseline afresh,
rho* = rho (1 + rel_se * N(0, 1)) (a parametric bootstrap of the probe mean, independent across modules
since each weight has its own probes), and divides the module's NFN by rho* / rho.

Public names: `resample_counts`, `bootstrap_modules`, `bootstrap_types`, `module_intervals`, `layer_spread`,
`selection_stability`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

SCORE_FREE_STRATEGIES = ("attn", "mlp", "all", "random", "peft_default")


def resample_counts(n_seq: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n_seq) matrix: how often each sequence is drawn in each resample (rows sum to n_seq)."""
    if n_seq < 1:
        raise ValueError("bootstrap needs at least one sequence")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_seq, size=(n_bootstrap, n_seq))
    counts = np.zeros((n_bootstrap, n_seq), dtype=np.float64)
    np.add.at(counts, (np.arange(n_bootstrap)[:, None], draws), 1.0)
    return counts


def _type_means(module_nfn: np.ndarray, module_types: list[str], types: list[str]) -> np.ndarray:
    """Mean over layers (modules of a type) along the last axis; NaN modules (never routed) are skipped."""
    module_types_arr = np.asarray(module_types)
    out = np.full(module_nfn.shape[:-1] + (len(types),), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN type -> NaN, on purpose
        for j, t in enumerate(types):
            out[..., j] = np.nanmean(module_nfn[..., module_types_arr == t], axis=-1)
    return out


def layer_spread(module_nfn: np.ndarray, module_types: list[str], types: list[str]) -> pd.DataFrame:
    """Per type: mean over layers of the per-module NFN, and its min / max / std (ddof 0) / n_layers."""
    rows = []
    module_types_arr = np.asarray(module_types)
    for t in types:
        v = np.asarray(module_nfn, dtype=float)[module_types_arr == t]
        v = v[np.isfinite(v)]
        rows.append(dict(type=t, nfn=float(v.mean()) if v.size else np.nan,
                         layer_min=float(v.min()) if v.size else np.nan,
                         layer_max=float(v.max()) if v.size else np.nan,
                         layer_std=float(v.std()) if v.size else np.nan, n_layers=int(v.size)))
    return pd.DataFrame(rows)


def bootstrap_modules(num: np.ndarray, den: np.ndarray, n_bootstrap: int, seed: int,
                      baseline_rel_se: np.ndarray | None = None) -> np.ndarray:
    """(n_bootstrap, n_modules) resampled module NFN: sequences resampled with replacement, and each
    module's baseline redrawn with its relative standard error `baseline_rel_se` (None or 0: held fixed)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if n_bootstrap == 0:
        return np.empty((0, num.shape[1]))
    counts = resample_counts(num.shape[0], n_bootstrap, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (counts @ num) / (counts @ den)
    if baseline_rel_se is not None and np.any(np.asarray(baseline_rel_se) > 0):
        rel = np.nan_to_num(np.asarray(baseline_rel_se, dtype=np.float64))
        eps = np.random.default_rng([int(seed), 1]).standard_normal(boot.shape)
        boot = boot / np.maximum(1.0 + rel * eps, 1e-6)
    return boot


def module_intervals(module_boot: np.ndarray, ci_level: float, n_modules: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each module's NFN from `bootstrap_modules` (NaN without resamples)."""
    if len(module_boot) == 0:
        return np.full(n_modules, np.nan), np.full(n_modules, np.nan)
    alpha = (1.0 - ci_level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(module_boot, [alpha, 1.0 - alpha], axis=0)
    return low, high


def bootstrap_types(num: np.ndarray, den: np.ndarray, module_types: list[str], types: list[str],
                    n_bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0,
                    baseline_rel_se: np.ndarray | None = None, module_boot: np.ndarray | None = None
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-type NFN table with a percentile bootstrap interval over sequences.

    num, den: (n_seq, n_modules) per-sequence sufficient statistics; module NFN = sum(num) / sum(den).
    Returns (table with columns type, nfn, nfn_ci_low, nfn_ci_high, layer_min, layer_max, layer_std,
    n_layers; resampled type NFN of shape (n_bootstrap, n_types)). n_bootstrap == 0 gives NaN intervals.
    baseline_rel_se: per-module relative SE of a Monte Carlo baseline, propagated (see the module docstring);
    module_boot: resamples already drawn by `bootstrap_modules` (then n_bootstrap and seed are not used again).
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 2:
        raise ValueError(f"num and den must be (n_seq, n_modules) arrays of one shape, got {num.shape} and {den.shape}")
    if num.shape[1] != len(module_types):
        raise ValueError(f"{num.shape[1]} module columns but {len(module_types)} module types")
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    with np.errstate(invalid="ignore", divide="ignore"):
        point = num.sum(0) / den.sum(0)
    table = layer_spread(point, module_types, types)
    if n_bootstrap == 0:
        table.insert(2, "nfn_ci_low", np.nan)
        table.insert(3, "nfn_ci_high", np.nan)
        return table, np.empty((0, len(types)))
    if module_boot is None:
        module_boot = bootstrap_modules(num, den, n_bootstrap, seed, baseline_rel_se)  # (n_bootstrap, n_modules)
    type_boot = _type_means(module_boot, module_types, types)  # (n_bootstrap, n_types)
    alpha = (1.0 - ci_level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(type_boot, [alpha, 1.0 - alpha], axis=0)
    table.insert(2, "nfn_ci_low", low)
    table.insert(3, "nfn_ci_high", high)
    return table, type_boot


def _chosen(values: np.ndarray, k: int, strategy: str) -> np.ndarray:
    """Boolean membership (..., n_types) of the k lowest (plop) or highest (plop_inverse) types."""
    v = np.where(np.isfinite(values), values, np.inf if strategy == "plop" else -np.inf)
    order = np.argsort(v if strategy == "plop" else -v, axis=-1, kind="stable")[..., :k]
    member = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(member, order, True, axis=-1)
    return member


def selection_stability(type_boot: np.ndarray, type_point: np.ndarray, k: int, strategy: str = "plop") -> float:
    """Share of bootstrap resamples whose chosen k-set of types equals the full-sample k-set.

    `plop` picks the k lowest type NFNs, `plop_inverse` the k highest; strategies that do not depend on
    scores (attn, mlp, all, random, peft_default) are stable by construction (1.0).
    """
    type_point = np.asarray(type_point, dtype=float)
    n_types = type_point.shape[-1]
    if strategy in SCORE_FREE_STRATEGIES:
        return 1.0
    if strategy not in ("plop", "plop_inverse"):
        raise ValueError(f"unknown strategy {strategy!r}; use one of plop, plop_inverse, "
                         + ", ".join(SCORE_FREE_STRATEGIES))
    if not 1 <= k <= n_types:
        raise ValueError(f"k={k} must be between 1 and the number of module types ({n_types})")
    type_boot = np.asarray(type_boot, dtype=float)
    if type_boot.shape[0] == 0:
        raise ValueError("no bootstrap resamples were kept (n_bootstrap=0); score again with n_bootstrap > 0")
    full = _chosen(type_point, k, strategy)
    boot = _chosen(type_boot, k, strategy)
    return float((boot == full).all(axis=-1).mean())
