"""Arms x seeds at a matched budget (`plop compare`, the serial runner in the flat layout) on the tiny
Llama and the generated arithmetic task; the comparison statistics against scipy."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from plop_core.arms import budget_ranks
from plop_core.cli import main
from plop_core.comparison import format_summary, summarize

ARMS = ["plop", "all"]


@pytest.fixture(scope="module")
def compared(llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp")
    rc = main(["compare", "--model", str(llama_dir), "--task", "arithmetic", "--arms", ",".join(ARMS),
               "--seeds", "0,1", "--max-steps", "2", "--lr", "0.01", "--n-train", "8", "--n-eval", "6",
               "--n-score", "8", "--r", "4", "--max-length", "64", "--out", str(out), "--no-progress"])
    assert rc == 0
    return out


def test_one_row_per_arm_and_seed_plus_base_and_disjoint_rows(compared):
    runs = pd.read_parquet(compared / "runs.parquet")
    assert len(runs) == len(ARMS) * 2 + 1 and (runs["arm"] == "base").sum() == 1
    assert set(map(tuple, runs[runs.arm != "base"][["arm", "seed"]].values)) == {(a, s) for a in ARMS for s in (0, 1)}
    assert runs.loc[runs.arm == "all", "types"].iloc[0] == "q,k,v,o,gate,up,down"
    assert len(runs.loc[runs.arm == "plop", "types"].iloc[0].split(",")) == 3
    train_ids = {r["id"] for r in json.loads((compared / "train_rows.json").read_text())}
    eval_ids = {r["id"] for r in json.loads((compared / "eval_rows.json").read_text())}
    assert len(train_ids) == 8 and eval_ids and not train_ids & eval_ids
    for arm in ARMS:  # each run's adapter and record, loadable by PEFT's own file names
        assert (compared / "runs" / f"{arm}_seed0" / "adapter" / "adapter_config.json").is_file()
        assert json.loads((compared / "runs" / f"{arm}_seed0" / "record.json").read_text())["arm"] == arm


def test_budget_matching_within_one_rank_step(compared):
    runs = pd.read_parquet(compared / "runs.parquet")
    runs = runs[runs.arm != "base"]
    target = int(runs["target_params"].iloc[0])
    assert target == int(runs.loc[runs.arm == "plop", "trainable_params"].iloc[0])
    for _, r in runs.iterrows():
        per_rank = r["trainable_params"] / r["rank"]
        assert abs(r["trainable_params"] - target) <= per_rank / 2, r["arm"]
    # 'all' adapts every type, so it gets a lower rank than plop (3 of 7 types)
    assert runs.loc[runs.arm == "all", "rank"].iloc[0] < runs.loc[runs.arm == "plop", "rank"].iloc[0]


def test_summary_has_intervals_and_paired_tests(compared):
    s = pd.read_parquet(compared / "summary.parquet").set_index("arm")
    assert list(s.index) == ARMS + ["base"]
    assert s.loc["plop", "nll_test"] == "reference"
    assert s.loc["all", "nll_test"] == "paired t over 2 seeds"
    assert 0 <= s.loc["all", "nll_p_seeds"] <= 1 and 0 <= s.loc["all", "nll_p_rows"] <= 1
    # training lowered the held-out NLL of every arm below the base model's
    assert (s.drop("base")["nll"] < s.loc["base", "nll"]).all()
    assert (s["nll_low"] <= s["nll"] + 1e-12).all() and (s["nll"] <= s["nll_high"] + 1e-12).all()
    assert s.loc["base", "trainable_params"] == 0
    ev = pd.read_parquet(compared / "evaluation.parquet")  # the same numbers, with provenance columns
    assert ev.groupby("arm")["value"].mean().to_dict() == pytest.approx(s["nll"].to_dict())
    assert (ev["sweep"] == "compare").all() and ev["model_identity"].nunique() == 1


def _toy_runs(seeds):
    rows, per_row = [], {}
    for arm, shift in (("plop", 0.0), ("attn", 0.1)):
        for s in seeds:
            v = 1.0 + shift + 0.01 * s
            rows.append(dict(arm=arm, seed=s, types="x", rank=4, trainable_params=100, nll=v, nll_low=v - .1,
                             nll_high=v + .1))
            per_row[(arm, s)] = {"nll": [v, v + 0.2, v - 0.1]}
    return pd.DataFrame(rows), per_row


def test_summary_statistics_golden():
    from scipy import stats

    runs, per_row = _toy_runs([0, 1, 2])
    runs.loc[(runs.arm == "attn") & (runs.seed == 2), "nll"] = 1.3
    s = summarize(runs, per_row, ["nll"]).set_index("arm")
    a = runs[runs.arm == "attn"].sort_values("seed")["nll"].to_numpy()
    p = runs[runs.arm == "plop"].sort_values("seed")["nll"].to_numpy()
    assert s.loc["attn", "nll_diff"] == pytest.approx(np.mean(a - p))
    assert s.loc["attn", "nll_p_seeds"] == pytest.approx(stats.ttest_rel(a, p).pvalue)
    half = stats.t.ppf(0.975, 2) * np.std(a, ddof=1) / np.sqrt(3)
    assert s.loc["attn", "nll_low"] == pytest.approx(a.mean() - half)

    one, per_row1 = _toy_runs([0])
    s1 = summarize(one, per_row1, ["nll"]).set_index("arm")
    assert s1.loc["attn", "nll_test"] == "n/a (1 seed)" and math.isnan(s1.loc["attn", "nll_p_seeds"])
    assert s1.loc["attn", "nll_low"] == pytest.approx(1.0)  # the run's own interval with one seed
    line = format_summary(s1.reset_index(), "nll").splitlines()[2]
    assert line.split() == ["plop", "x", "4", "100", "1.000", "[0.900,", "1.100]", "n/a", "n/a"]

    # another reference arm (study-k has no `plop` arm): the label and the header name it
    by_attn = summarize(runs, per_row, ["nll"], reference="attn").set_index("arm")
    assert by_attn.loc["plop", "nll_diff"] == pytest.approx(np.mean(p - a))
    assert by_attn.loc["attn", "nll_test"] == "reference"
    absent = summarize(runs[runs.arm == "attn"], per_row, ["nll"], reference="v,up,down")
    assert absent["nll_test"].tolist() == ["n/a (no v,up,down arm)"]
    assert format_summary(by_attn.reset_index(), "nll", "attn").splitlines()[0].split()[7:10] == \
        ["diff", "vs", "attn"]


def test_budget_ranks_without_matching_keep_r(llama):
    from plop_core.modules import discover_candidates
    from plop_core.placement import placement_from_types

    d = discover_candidates(llama)
    pls = {"plop": placement_from_types(d, "v,o,down"), "all": placement_from_types(d, "q,k,v,o,gate,up,down")}
    assert {a: b["rank"] for a, b in budget_ranks(pls, 8, budget_match=False).items()} == {"plop": 8, "all": 8}
    matched = budget_ranks(pls, 8)
    per_rank_all = pls["all"].trainable_params(1)
    assert matched["plop"]["rank"] == 8
    assert matched["all"]["rank"] == round(pls["plop"].trainable_params(8) / per_rank_all)


def test_compare_cli_prints_the_table(llama_dir, tmp_path, capsys):
    rc = main(["compare", "--model", str(llama_dir), "--task", "arithmetic", "--arms", "q+v", "--seeds", "0",
               "--max-steps", "1", "--n-train", "4", "--n-eval", "3", "--r", "2", "--no-budget-match",
               "--max-length", "64", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    table = [line.split() for line in out.splitlines() if line.startswith(("q,v ", "base "))]
    assert [row[:4] for row in table] == [["q,v", "q,v", "2", table[0][3]], ["base", "-", "0", "0"]]
    assert "budget: plop arm at r=2" in out and "no budget matching" in out
    assert (tmp_path / "summary.parquet").is_file() and (tmp_path / "runs" / "q_v_seed0" / "adapter").is_dir()


def test_compare_unknown_arm_is_a_clear_error(llama_dir, tmp_path, capsys):
    rc = main(["compare", "--model", str(llama_dir), "--task", "arithmetic", "--arms", "attn,bogus", "--seeds", "0",
               "--max-steps", "1", "--n-train", "4", "--n-eval", "2", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "unknown arm 'bogus'" in capsys.readouterr().err


def test_grpo_arm_runs_and_records_rewards(llama_dir, tmp_path):
    rc = main(["compare", "--model", str(llama_dir), "--task", "arithmetic", "--arms", "o+down", "--seeds", "0",
               "--method", "grpo", "--max-steps", "1", "--n-train", "4", "--n-eval", "2", "--r", "2",
               "--no-budget-match", "--metrics", "exact_match", "--max-new-tokens", "4",
               "--max-completion-length", "6", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    rec = json.loads((tmp_path / "runs" / "o_down_seed0" / "record.json").read_text())
    assert rec["types"] == "o,down" and rec["rank"] == 2 and rec["train"]["steps"] == 1
    assert rec["train"]["mean_reward"] is not None and rec["metrics"]["exact_match_n"] == 2
