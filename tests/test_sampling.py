"""Sampling: determinism by seed (golden ids and hash), stratification, content hash, Parquet round trip,
token statistics, and the too-small / allow_smaller rules. Fast: generated `arithmetic` and local files."""

import json

import pyarrow.parquet as pq
import pytest

from plop_core.data import Sample, local_task, sample_hash, sample_task
from plop_core.data.sampling import PARQUET_META_KEY, stratified_quotas

# Pinned across machines: ids come from sha256-seeded random.Random and sha256 ranking only.
GOLDEN_IDS = ["208*350", "72*38", "6661+5188", "16+28", "6794-7523", "5274*2742", "190-191", "46-33", "6+2",
              "333+991"]
GOLDEN_HASH = "46d7f3da2a27abd38cac3255820b2cc67a689a127338ef99fa2545026aa54a13"


def test_same_seed_same_rows_and_golden_hash():
    a = sample_task("arithmetic", n=10, seed=0)
    b = sample_task("arithmetic", n=10, seed=0)
    assert a.ids == b.ids == GOLDEN_IDS
    assert a.sample_hash == b.sample_hash == GOLDEN_HASH
    assert a.texts == b.texts and a.texts[0] == "What is 208 * 350?\nAnswer: 72800"


def test_different_seed_different_rows():
    a, b = sample_task("arithmetic", n=50, seed=0), sample_task("arithmetic", n=50, seed=1)
    assert a.ids != b.ids and len(set(a.ids) & set(b.ids)) < 25
    assert a.sample_hash != b.sample_hash


def test_sample_independent_of_row_order(tmp_path):
    rows = [{"id": f"r{i}", "text": f"sentence number {i}"} for i in range(40)]
    p1, p2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    p1.write_text("\n".join(json.dumps(r) for r in rows))
    p2.write_text("\n".join(json.dumps(r) for r in reversed(rows)))
    s1 = sample_task(local_task(p1, name="same"), n=10, seed=3)
    s2 = sample_task(local_task(p2, name="same"), n=10, seed=3)
    assert s1.ids == s2.ids and s1.sample_hash == s2.sample_hash


def test_hash_is_content_hash():
    s = sample_task("arithmetic", n=5, seed=2)
    assert s.sample_hash == sample_hash("arithmetic", "train", s.ids, s.texts)
    assert sample_hash("arithmetic", "eval", s.ids, s.texts) != s.sample_hash
    assert sample_hash("arithmetic", "train", s.ids, [t + " " for t in s.texts]) != s.sample_hash


def test_stratified_quotas_are_proportional():
    assert stratified_quotas({"a": 50, "b": 30, "c": 20}, 10) == {"a": 5, "b": 3, "c": 2}
    q = stratified_quotas({"a": 1, "b": 1, "c": 1}, 2)
    assert sum(q.values()) == 2 and q == {"a": 1, "b": 1, "c": 0}  # ties broken by name


def test_stratified_sample_matches_category_shares():
    s = sample_task("arithmetic", n=120, seed=0)
    train = sample_task("arithmetic", n=3842, seed=0)  # the whole train split
    assert s.meta["stratified"] and s.meta["n_split"] == 3842
    for cat, k in s.meta["categories"].items():
        share = train.meta["categories"][cat] / 3842
        assert abs(k - 120 * share) < 1, (cat, k, 120 * share)
    flat = sample_task("arithmetic", n=120, seed=0, stratify=False)
    assert not flat.meta["stratified"] and flat.ids != s.ids


def test_too_small_and_allow_smaller(tmp_path):
    p = tmp_path / "tiny.csv"
    p.write_text("text\nalpha\nbeta\ngamma\n")
    spec = local_task(p)
    with pytest.raises(ValueError, match=r"has 3 rows, fewer than the 10 requested.*allow_smaller=True"):
        sample_task(spec, n=10, split="all")
    s = sample_task(spec, n=10, split="all", allow_smaller=True)
    assert len(s) == 3 and s.meta["n"] == 3 and s.meta["n_requested"] == 10
    with pytest.raises(ValueError, match="n must be >= 1"):
        sample_task(spec, n=0, split="all")


def test_parquet_round_trip_with_metadata(tmp_path):
    s = sample_task("arithmetic", n=12, seed=4, split="eval")
    path = s.to_parquet(tmp_path / "sub" / "sample.parquet")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    meta = json.loads(pq.read_schema(path).metadata[PARQUET_META_KEY])
    assert meta["task"] == "arithmetic" and meta["split"] == "eval" and meta["seed"] == 4 and meta["n"] == 12
    assert meta["sample_hash"] == s.sample_hash and meta["source"] == "offline"
    assert meta["package"] == "plop-arithmetic-generator" and meta["package_version"] == "v1"
    back = Sample.from_parquet(path)
    assert back.ids == s.ids and back.texts == s.texts and back.sample_hash == s.sample_hash
    assert back.rows == s.rows and back.meta == s.meta


def test_parquet_edited_file_is_rejected(tmp_path):
    import pyarrow as pa

    path = sample_task("arithmetic", n=4, seed=0).to_parquet(tmp_path / "s.parquet")
    t = pq.read_table(path)
    texts = t.column("text").to_pylist()
    texts[0] = "tampered"
    pq.write_table(t.set_column(1, "text", pa.array(texts)), path)
    with pytest.raises(ValueError, match="does not match the recorded"):
        Sample.from_parquet(path)
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a plop sample"):
        Sample.from_parquet(tmp_path / "other.parquet")


def test_token_stats_report_truncation(tok, tmp_path):
    p = tmp_path / "t.jsonl"
    lines = [{"text": "word " * k} for k in (1, 2, 4, 8, 16, 32, 64, 128)]
    p.write_text("\n".join(json.dumps(r) for r in lines))
    s = sample_task(local_task(p), n=8, split="all")
    lengths = sorted(len(x) for x in tok(s.texts)["input_ids"])
    st = s.token_stats(tok, max_length=lengths[5])
    assert st["n_texts"] == 8 and st["max_tokens"] == lengths[-1] and st["min_tokens"] == lengths[0]
    assert st["n_truncated"] == 2 and st["truncated_share"] == 0.25
    assert st["mean_tokens"] == pytest.approx(sum(lengths) / 8)
    assert st["tokens_kept"] == sum(min(x, lengths[5]) for x in lengths)
    assert s.token_stats(tok, max_length=10_000)["n_truncated"] == 0
