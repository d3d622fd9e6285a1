"""Data-parallel scoring: shards of a sample scored separately and merged equal one unsharded run.

Equivalences on tiny fixed-seed models: module and part NFN, type table and intervals, the bootstrap's
type resamples, the per-sequence statistics and the meta; a part survives Parquet exactly; the merge
refuses parts that do not belong together, naming why.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from plop_core.modules import discover_candidates
from plop_core.nfn import score_nfn, score_partial
from plop_core.shards import PartialScores, merge_scores, shard_ranges
from tests.tiny import tiny_model

TEXTS = [f"Tom has {i} apples and buys {i * 7 % 11} more; " * (1 + i % 4) for i in range(13)]
TEXTS[5] = ""  # tokenizes to nothing (the tiny tokenizer adds no special tokens): dropped, listed
KW = dict(batch_size=3, max_length=24, n_probe=16, seed=3, baseline_cache=False, progress=False)


def _sharded(model, tok, ranges, estimator="probe", n_bootstrap=200):
    disc = discover_candidates(model)
    parts = [score_partial(model, tok, TEXTS[a:b], start=a, estimator=estimator, candidates=disc, **KW)
             for a, b in ranges]
    return merge_scores(parts[::-1], disc, n_bootstrap=n_bootstrap, ci_level=0.9)  # order of parts is free


@pytest.mark.parametrize("arch", ["llama", "phi3", "mixtral"])  # plain, fused parts, packed experts
@pytest.mark.parametrize("estimator", ["probe", "analytic"])
def test_merged_shards_equal_one_unsharded_run(tok, arch, estimator):
    model = tiny_model(arch, seed=0)
    whole = score_nfn(model, tok, TEXTS, estimator=estimator, n_bootstrap=200, ci_level=0.9, **KW)
    merged = _sharded(model, tok, [(0, 4), (4, 6), (6, 13)], estimator)
    for name in ("modules", "parts", "types"):
        a, b = getattr(whole, name), getattr(merged, name)
        assert list(a.columns) == list(b.columns) and len(a) == len(b) > (0 if name != "parts" or arch == "phi3" else -1)
        num = a.select_dtypes("number").columns  # atol: layer_std (~3e-4) is a spread, its relative error is larger
        np.testing.assert_allclose(b[num].to_numpy(float), a[num].to_numpy(float), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(b["nfn"].to_numpy(float), a["nfn"].to_numpy(float), rtol=1e-6)
        assert (a.drop(columns=num).astype(str) == b.drop(columns=num).astype(str)).all().all()
    # the bootstrap resampled the same sequences: same resamples, same stability
    assert whole.type_resamples.shape == merged.type_resamples.shape == (200, len(whole.types))
    np.testing.assert_allclose(merged.type_resamples, whole.type_resamples, rtol=1e-6)
    assert merged.stability(2) == whole.stability(2)
    np.testing.assert_array_equal(merged.per_sequence["sequence_index"], [i for i in range(13) if i != 5])
    for k in ("num", "den", "sum_a", "count"):
        np.testing.assert_allclose(merged.per_sequence[k], whole.per_sequence[k], rtol=1e-6)
    same = {k: v for k, v in whole.meta.items() if k != "oom_backoff"}
    assert {k: merged.meta[k] for k in same} == same and merged.meta["shards"] == 3 and "shards" not in whole.meta
    assert whole.meta["dropped_empty"] == [5] and whole.meta["n_sequences"] == 12


def test_a_part_round_trips_through_parquet_exactly(tok, tmp_path):
    model = tiny_model("mixtral", seed=0)
    part = score_partial(model, tok, TEXTS[:9], **KW)
    frame, meta = part.to_frame()
    assert len(frame) == part.stats.shape[1] * 8  # one row per (kept sequence, unit); text 5 was dropped
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "p.parquet")
    back = PartialScores.from_frame(pq.read_table(tmp_path / "p.parquet").to_pandas(), meta)
    np.testing.assert_array_equal(back.stats, part.stats)  # bit for bit
    np.testing.assert_array_equal(back.sequence_index, [0, 1, 2, 3, 4, 6, 7, 8])
    assert back.dropped_empty == [5] and back.units == part.units and back.n_tokens == part.n_tokens
    assert back.expert_pairs.keys() == part.expert_pairs.keys() and back.baselines.keys() == part.baselines.keys()
    disc = discover_candidates(model)
    a, b = merge_scores([part], disc, n_bootstrap=0), merge_scores([back], disc, n_bootstrap=0)
    assert a.modules.equals(b.modules)


def test_shard_ranges_cover_the_sample_once():
    assert shard_ranges(13, 3) == [(0, 5), (5, 9), (9, 13)]
    assert shard_ranges(4, 1) == [(0, 4)]
    with pytest.raises(ValueError, match=r"scorer.shards=5 is more than the 4 texts of the sample; lower"):
        shard_ranges(4, 5)


def test_merge_refuses_parts_that_do_not_belong_together(tok, llama):
    disc = discover_candidates(llama)
    a = score_partial(llama, tok, TEXTS[:4], candidates=disc, **KW)
    c = score_partial(llama, tok, TEXTS[6:], start=6, candidates=disc, **KW)
    with pytest.raises(ValueError, match="starts at text 6, expected 4"):
        merge_scores([a, c], disc)
    other = score_partial(llama, tok, TEXTS[4:6], start=4, candidates=disc, **{**KW, "max_length": 8})
    with pytest.raises(ValueError, match=r"scored differently \(max_length differ\)"):
        merge_scores([a, other, c], disc)
    ref = [score_partial(llama, tok, TEXTS[x:y], start=x, candidates=disc, estimator="reference", **KW)
           for x, y in [(0, 6), (6, 13)]]
    with pytest.raises(ValueError, match="needs the probe or analytic estimator and include_padding false"):
        merge_scores(ref, disc)


def test_serial_sweep_with_shards_equals_the_unsharded_sweep(llama_dir, tmp_path):
    """`scorer.shards: 3` in the serial runner: three `sequences` files per cell, read back into the same
    scores as `shards: 1`; a deleted shard file is the only shard rescored, and the cell is merged again."""
    import pandas as pd

    from plop_core.config import load_sweep_config
    from plop_core.units import Layout, load_done, plan, run_serial

    def sweep(root, shards):
        return load_sweep_config({"name": f"s{shards}", "models": [{"id": str(llama_dir), "name": "tiny"}],
                                  "tasks": ["arithmetic"], "sampling": {"n_samples": 10, "max_length": 24},
                                  "scorer": {"n_probe": 16, "n_bootstrap": 50, "batch_size": 3, "shards": shards},
                                  "outputs": {"root": str(tmp_path / root)}})

    one = run_serial(sweep("one", 1), track=False, progress=False)
    three = run_serial(sweep("three", 3), track=False, progress=False)
    assert not one["failed"] and not three["failed"] and "shards" not in one
    assert [(s["index"], s["ok"], s["cached"]) for s in three["shards"]] == [(0, True, False), (1, True, False),
                                                                             (2, True, False)]
    seq = pd.read_parquet(tmp_path / "three" / "sequences")
    assert sorted(seq.groupby("shard")["sequence_index"].nunique()) == [3, 3, 4]  # ranges [0,4) [4,7) [7,10)
    assert (seq["cell_key"] == three["cells"][0]["cell_key"]).all() and not (tmp_path / "one" / "sequences").exists()
    a, b = (pd.read_parquet(tmp_path / r / "types").sort_values("type") for r in ("one", "three"))
    for col in ("nfn", "nfn_ci_low", "nfn_ci_high", "layer_min", "layer_max"):
        np.testing.assert_allclose(b[col].to_numpy(float), a[col].to_numpy(float), rtol=1e-6)
    assert three["cells"][0]["cell_key"] != one["cells"][0]["cell_key"]  # scorer.shards is in the key

    cfg = sweep("three", 3)
    cell = plan.plan_sweep(cfg)[0]
    victim = plan.cell_shards(cell)[1]
    (tmp_path / "three" / load_done(victim).files["sequences"]).unlink()
    again = run_serial(cfg, track=False, progress=False)
    assert [s["cached"] for s in again["shards"]] == [True, False, True] and not again["cells"][0]["cached"]
    c = pd.read_parquet(Layout.hive(tmp_path / "three").resolve(again["cells"][0]["files"]["types"])).sort_values("type")
    np.testing.assert_allclose(c["nfn"].to_numpy(float), b["nfn"].to_numpy(float), rtol=1e-6)
