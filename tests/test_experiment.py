"""Arms x seeds at matched budget on the tiny Llama and the generated arithmetic task; summary statistics."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from plop_core.config import EvalConfig, FinetuneConfig, LoraRecipe, SamplingConfig, ScorerConfig
from plop_core.experiment import budget_ranks, format_summary, run_arm, run_experiment, summarize

ARMS = ["plop", "all"]  # explicit type lists are covered by the CLI test


@pytest.fixture(scope="module")
def experiment(llama_dir, tmp_path_factory):
    ft = FinetuneConfig(max_steps=2, batch_size=4, learning_rate=1e-2, max_length=64, train_samples=8,
                        lora=LoraRecipe(r=4))
    ev = EvalConfig(metrics=["nll"], n_samples=6, n_bootstrap=100)
    out = tmp_path_factory.mktemp("exp")
    res = run_experiment(str(llama_dir), "arithmetic", ARMS, [0, 1], ft, ev,
                         out_dir=out, progress=False, sampling=SamplingConfig(n_samples=8),
                         scorer=ScorerConfig(n_probe=16, n_bootstrap=20))
    return res, out


def test_one_row_per_arm_and_seed_plus_base(experiment):
    res, out = experiment
    runs = res.runs
    assert len(runs) == len(ARMS) * 2 + 1 and (runs["arm"] == "base").sum() == 1
    assert set(map(tuple, runs[runs.arm != "base"][["arm", "seed"]].values)) == {(a, s) for a in ARMS for s in (0, 1)}
    assert runs.loc[runs.arm == "all", "types"].iloc[0] == "q,k,v,o,gate,up,down"
    assert len(runs.loc[runs.arm == "plop", "types"].iloc[0].split(",")) == 3
    for name in ("runs", "summary", "experiment", "chart"):
        assert name in res.files, res.files
    assert json.loads((out / "experiment.json").read_text())["n_train"] == 8
    train_ids = {r["id"] for r in json.loads((out / "train_rows.json").read_text())}
    eval_ids = {r["id"] for r in json.loads((out / "eval_rows.json").read_text())}
    assert train_ids and eval_ids and not train_ids & eval_ids


def test_budget_matching_within_one_rank_step(experiment):
    res, _ = experiment
    runs = res.runs[res.runs.arm != "base"]
    target = int(runs["target_params"].iloc[0])
    assert target == int(runs.loc[runs.arm == "plop", "trainable_params"].iloc[0])
    for _, r in runs.iterrows():
        per_rank = r["trainable_params"] / r["rank"]
        assert abs(r["trainable_params"] - target) <= per_rank, r["arm"]
    # 'all' adapts every type, so it gets a lower rank than plop (3 of 7 types)
    assert runs.loc[runs.arm == "all", "rank"].iloc[0] < runs.loc[runs.arm == "plop", "rank"].iloc[0]


def test_summary_has_intervals_and_paired_tests(experiment):
    res, _ = experiment
    s = res.summary.set_index("arm")
    assert list(s.index) == ARMS + ["base"]
    assert s.loc["plop", "nll_test"] == "reference"
    assert s.loc["all", "nll_test"] == "paired t over 2 seeds"
    assert 0 <= s.loc["all", "nll_p_seeds"] <= 1 and 0 <= s.loc["all", "nll_p_rows"] <= 1
    # training lowered the held-out NLL of every arm below the base model's
    assert (s.drop("base")["nll"] < s.loc["base", "nll"]).all()
    assert (s["nll_low"] <= s["nll"] + 1e-12).all() and (s["nll"] <= s["nll_high"] + 1e-12).all()
    assert s.loc["base", "trainable_params"] == 0
    table = res.table()
    assert "plop" in table and "diff vs plop" in table and "[" in table


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
    assert "n/a" in format_summary(s1.reset_index(), "nll")


def test_budget_ranks_without_matching_keep_r(llama):
    from plop_core.modules import discover_candidates
    from plop_core.placement import placement_from_types

    d = discover_candidates(llama)
    pls = {"plop": placement_from_types(d, "v,o,down"), "all": placement_from_types(d, "q,k,v,o,gate,up,down")}
    assert {a: b["rank"] for a, b in budget_ranks(pls, 8, budget_match=False).items()} == {"plop": 8, "all": 8}
    matched = budget_ranks(pls, 8)
    assert matched["plop"]["rank"] == 8 and matched["all"]["rank"] < 8


def test_bad_arm_names_the_fix(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown arm"):
        run_experiment(str(llama_dir), "arithmetic", ["attn", "bogus"], [0],
                       FinetuneConfig(max_steps=1, train_samples=4), EvalConfig(n_samples=2), out_dir=tmp_path,
                       progress=False)


def test_compare_cli_prints_the_table(llama_dir, tmp_path, capsys):
    from plop_core.cli import main

    rc = main(["compare", "--model", str(llama_dir), "--task", "arithmetic", "--arms", "q+v", "--seeds", "0",
               "--max-steps", "1", "--n-train", "4", "--n-eval", "3", "--r", "2", "--no-budget-match",
               "--max-length", "64", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "nll (lower is better" in out and "q,v" in out and "base" in out and "n/a" in out
    assert (tmp_path / "summary.parquet").is_file() and (tmp_path / "runs" / "q_v_seed0" / "adapter").is_dir()


def test_run_arm_grpo_is_json_in_json_out(llama, llama_dir, tmp_path):
    from plop_core.data import get_task
    from plop_core.modules import discover_candidates
    from plop_core.placement import placement_from_types

    spec = get_task("arithmetic")
    pl = placement_from_types(discover_candidates(llama), "o,down").to_dict()
    ft = FinetuneConfig(method="grpo", max_steps=1, batch_size=4, num_generations=4, max_completion_length=6,
                        lora=LoraRecipe(r=2)).model_dump(mode="json")
    ev = EvalConfig(metrics=["exact_match"], n_samples=2, max_new_tokens=4).model_dump(mode="json")
    rec = run_arm(str(llama_dir), "arithmetic", pl, 2, 0, ft, ev, spec.load("train")[:4], spec.load("eval")[:2],
                  str(tmp_path), arm="o+down")
    assert json.loads(json.dumps(rec)) == rec
    assert rec["types"] == "o,down" and rec["rank"] == 2 and rec["steps"] == 1
    assert rec["mean_reward"] is not None and rec["exact_match_n"] == 2
    assert (tmp_path / "o_down_seed0" / "run.json").is_file()
