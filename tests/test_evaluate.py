"""Evaluation metrics and intervals: golden interval values, handcrafted generations, and equivalences
on the tiny Llama (batching invariance, NLL equal to the model's own masked loss)."""

import numpy as np
import pytest
import torch

from plop_core.evaluate import (
    bootstrap_ratio_interval,
    continuation_logprobs,
    evaluate_model,
    generate_greedy,
    generate_sampled,
    score_exact_match,
    wilson_interval,
)
from plop_core.train.common import render_completion, render_prompt

ROWS = [
    {"prompt": "What is 2 + 2?", "completion": "The answer is 4.", "answer": "4"},
    {"prompt": "Natalia sold clips to 48 of her friends in April. How many?", "completion": "#### 48",
     "answer": "48"},
    {"prompt": "def add(a, b):", "completion": "return a + b", "answer": "0"},
]


def test_wilson_golden_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(50, 100, level=0.99)[0] < wilson_interval(50, 100, level=0.9)[0]


def test_bootstrap_interval_is_seeded_and_brackets_the_ratio():
    rng = np.random.default_rng(1)
    num, den = rng.uniform(1, 3, 40), rng.integers(1, 10, 40).astype(float)
    a = bootstrap_ratio_interval(num, den, seed=3)
    assert a == bootstrap_ratio_interval(num, den, seed=3)
    assert a[0] < num.sum() / den.sum() < a[1]


def test_exact_match_on_handcrafted_generations():
    gens = ["So 1,234 in total. #### 1,234", "The answer is 5 dollars.", "She has -3.5 left", "no idea",
            "\\boxed{0.5}", "it is 72 apples"]
    refs = [1234, "#### 5", "-3.5", "7", "1/2", 71]
    assert score_exact_match(gens, refs) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_nll_equals_the_models_masked_loss(llama, tok):
    res = evaluate_model(llama, tok, rows=ROWS[:1], metrics=["nll"], n_bootstrap=50)
    prompt_text = render_prompt(tok, ROWS[0]["prompt"])
    cont = render_completion(tok, ROWS[0]["prompt"], ROWS[0]["completion"])
    p = tok(prompt_text, add_special_tokens=False)["input_ids"]
    c = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    labels = ids.clone()
    labels[0, : len(p)] = -100
    with torch.no_grad():
        loss = llama(input_ids=ids, labels=labels).loss.item()
    assert res["nll"].value == pytest.approx(loss, rel=1e-5)
    assert res["nll"].n == 1 and res["nll"].higher_is_better is False


def test_logprobs_and_generation_do_not_depend_on_batching(llama, tok):
    pairs = [(render_prompt(tok, r["prompt"]), render_completion(tok, r["prompt"], r["completion"])) for r in ROWS]
    one = continuation_logprobs(llama, tok, pairs, batch_size=1)
    many = continuation_logprobs(llama, tok, pairs, batch_size=3)
    assert [n for _, n in one] == [n for _, n in many]
    np.testing.assert_allclose([v for v, _ in one], [v for v, _ in many], rtol=1e-4, atol=1e-4)

    prompts = [p for p, _ in pairs]
    g1 = generate_greedy(llama, tok, prompts, max_new_tokens=6, batch_size=1)
    g3 = generate_greedy(llama, tok, prompts, max_new_tokens=6, batch_size=3)
    assert g1 == g3
    assert tok.padding_side == "right"  # restored


def test_sampled_generation_is_seeded_and_tends_to_greedy_at_low_temperature(llama, tok):
    prompts = [render_prompt(tok, r["prompt"]) for r in ROWS]
    torch.manual_seed(0)
    a = generate_sampled(llama, tok, prompts, num_samples=3, max_new_tokens=5, batch_size=2)
    torch.manual_seed(0)
    b = generate_sampled(llama, tok, prompts, num_samples=3, max_new_tokens=5, batch_size=2)
    assert a == b and [len(g) for g in a] == [3] * len(prompts)
    assert len({t for g in a for t in g}) > 1  # temperature 1 on a random model: the draws differ
    assert tok.padding_side == "right"  # restored
    cold = generate_sampled(llama, tok, prompts, num_samples=2, max_new_tokens=5, batch_size=2, temperature=1e-6)
    assert cold == [[g, g] for g in generate_greedy(llama, tok, prompts, max_new_tokens=5)]


def test_evaluate_model_all_metrics_deterministic(llama, tok):
    # gold choice = the continuation the model itself prefers (computed independently) -> accuracy 1
    choices = ["4", "five", "The answer is 4."]
    prompt_text = render_prompt(tok, ROWS[0]["prompt"])
    lps = continuation_logprobs(llama, tok, [(prompt_text, render_completion(tok, ROWS[0]["prompt"], c))
                                             for c in choices])
    best = int(np.argmax([v for v, _ in lps]))
    rows = [dict(ROWS[0], choices=choices, reference=best), dict(ROWS[0], choices=choices, reference=choices[best])]
    kw = dict(metrics=["nll", "exact_match", "multiple_choice"], max_new_tokens=4, n_bootstrap=100)
    a = evaluate_model(llama, tok, rows=rows, **kw)
    b = evaluate_model(llama, tok, rows=rows, **kw)
    assert a.flat() == b.flat()
    assert a["multiple_choice"].value == 1.0 and a["multiple_choice"].interval == "wilson"
    assert a["exact_match"].n == 2 and 0 <= a["exact_match"].low <= a["exact_match"].high <= 1
    assert a["nll"].low <= a["nll"].value <= a["nll"].high
    assert set(a.flat()) >= {"nll", "nll_low", "nll_high", "nll_n", "exact_match", "multiple_choice_high"}
    assert llama.training is False


def test_evaluate_with_a_real_taskspec(llama, tok):
    from plop_core.data import get_task

    spec = get_task("arithmetic")
    rows = spec.load("eval")[:3]
    res = evaluate_model(llama, tok, spec, rows, metrics=["nll", "exact_match"], max_new_tokens=4, n_bootstrap=50)
    assert res["nll"].n == 3 and res["nll"].value > 0
    assert res["exact_match"].value == 0.0  # a random tiny model does not do arithmetic


def test_bad_input_messages(llama, tok):
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_model(llama, tok, rows=ROWS, metrics=["accuracy"])
    with pytest.raises(ValueError, match="no rows"):
        evaluate_model(llama, tok, rows=[], metrics=["nll"])
    with pytest.raises(ValueError, match="choices"):
        evaluate_model(llama, tok, rows=ROWS, metrics=["multiple_choice"])
