"""Bootstrap over sequences and selection stability (plop_core.stats), checked against direct numpy."""

import numpy as np
import pytest

from plop_core.stats import bootstrap_types, layer_spread, resample_counts, selection_stability


def test_resample_counts_rows_sum_to_n_and_are_seeded():
    c = resample_counts(7, 50, seed=3)
    assert c.shape == (50, 7) and np.all(c.sum(1) == 7)
    assert np.array_equal(c, resample_counts(7, 50, seed=3))
    assert not np.array_equal(c, resample_counts(7, 50, seed=4))


def test_bootstrap_equals_explicit_resampling_of_sequences():
    rng = np.random.default_rng(0)
    n_seq, types = 12, ["q", "v"]
    module_types = ["q", "v", "q", "v"]  # two layers
    den = rng.integers(1, 20, size=(n_seq, 4)).astype(float)
    num = den * rng.uniform(0.5, 2.0, size=(n_seq, 4))
    table, boot = bootstrap_types(num, den, module_types, types, n_bootstrap=200, ci_level=0.9, seed=1)
    # the same resamples done the slow way: draw sequences, recompute each module's ratio, average layers
    draws = np.random.default_rng(1).integers(0, n_seq, size=(200, n_seq))
    for b in (0, 57, 199):
        idx = draws[b]
        mod = num[idx].sum(0) / den[idx].sum(0)
        assert boot[b] == pytest.approx([mod[[0, 2]].mean(), mod[[1, 3]].mean()], rel=1e-12)
    point = num.sum(0) / den.sum(0)
    assert table["nfn"].tolist() == pytest.approx([point[[0, 2]].mean(), point[[1, 3]].mean()])
    assert table["layer_min"].tolist() == pytest.approx([point[[0, 2]].min(), point[[1, 3]].min()])
    assert table["n_layers"].tolist() == [2, 2]
    assert (table["nfn_ci_low"] <= table["nfn"]).all() and (table["nfn"] <= table["nfn_ci_high"]).all()
    assert list(table.columns) == ["type", "nfn", "nfn_ci_low", "nfn_ci_high", "layer_min", "layer_max",
                                   "layer_std", "n_layers"]


def test_zero_bootstrap_gives_nan_interval_and_stability_refuses():
    num, den = np.ones((3, 2)), np.ones((3, 2))
    table, boot = bootstrap_types(num, den, ["q", "v"], ["q", "v"], n_bootstrap=0)
    assert table["nfn_ci_low"].isna().all() and boot.shape == (0, 2)
    with pytest.raises(ValueError, match="n_bootstrap"):
        selection_stability(boot, table["nfn"].to_numpy(), 1)


def test_selection_stability_counts_identical_k_sets():
    point = np.array([0.9, 1.0, 2.0, 3.0])
    boot = np.array([[0.8, 1.1, 2.0, 3.0],    # same lowest-2 {0,1}
                     [1.2, 1.0, 0.5, 3.0],    # {2,1}: different
                     [0.1, 0.2, 5.0, 6.0],    # same
                     [0.9, 3.5, 2.0, 3.0]])   # {0,2}: different
    assert selection_stability(boot, point, 2, "plop") == 0.5
    assert selection_stability(boot, point, 1, "plop_inverse") == 0.75  # highest is type 3 except in row 3
    assert selection_stability(boot, point, 4, "plop") == 1.0
    assert selection_stability(boot, point, 2, "attn") == 1.0
    with pytest.raises(ValueError, match="k=5"):
        selection_stability(boot, point, 5)
    with pytest.raises(ValueError, match="unknown strategy"):
        selection_stability(boot, point, 2, "best")


def test_layer_spread_skips_never_routed_modules():
    t = layer_spread(np.array([1.0, np.nan, 3.0]), ["down", "down", "down"], ["down"])
    assert t.loc[0, "nfn"] == 2.0 and t.loc[0, "n_layers"] == 2 and t.loc[0, "layer_std"] == 1.0


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="same shape|one shape"):
        bootstrap_types(np.ones((3, 2)), np.ones((3, 3)), ["q", "v"], ["q", "v"])
    with pytest.raises(ValueError, match="ci_level"):
        bootstrap_types(np.ones((3, 2)), np.ones((3, 2)), ["q", "v"], ["q", "v"], ci_level=1.5)
