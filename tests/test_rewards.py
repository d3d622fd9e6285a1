"""Final-number extraction and the GRPO math rewards on handcrafted generations."""

import pytest

from plop_core.train.rewards import (
    correctness_reward,
    extract_final_number,
    format_reward,
    make_format_reward,
    numbers_match,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", 72.0),
        ("#### 1,234", 1234.0),
        ("The answer is 1,234.5 dollars.", 1234.5),
        ("The answer is $12.", 12.0),
        ("So she earned $10 per hour, 50 minutes gives \\boxed{10}. Check: 3 apples", 10.0),
        ("\\boxed{\\frac{3}{4}}", 0.75),
        ("\\boxed{-\\frac{1}{2}}", -0.5),
        ("The temperature dropped to -7 degrees.", -7.0),
        ("x = \u22123", -3.0),
        ("10-3=7", 7.0),
        ("She has 0.5 of the cake, i.e. .25 left", 0.25),
        ("half is 1/2", 0.5),
        ("He walked 3 miles, then 4 more. The final answer: 7 miles. Later 100 steps.", 7.0),
        ("<think>2 + 2 is 4, plus 1</think><answer>5</answer>", 5.0),
        ("<answer> 42 </answer> and then noise 99", 42.0),
        ("<think>#### 10, so \\boxed{9}; the answer is 8</think><answer>12</answer> 99", 12.0),
        ("<answer>\\boxed{3}</answer>", 3.0),
        ("<answer>The answer is 5 apples, 3 left</answer>", 5.0),
        ("<think>it is 7</think><answer>I am not sure</answer>", None),
        ("<think>3 + 4 = 7</think><answer>7", 7.0),
        ("It costs 5 dollars.", 5.0),
        ("There are 3 apples and 12 oranges", 12.0),
        ("No number here at all.", None),
        ("", None),
        (None, None),
        (42, 42.0),
        ("#### -12.50", -12.5),
    ],
)
def test_extract_final_number(text, expected):
    got = extract_final_number(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_numbers_match_tolerance_and_missing():
    assert numbers_match(72.0, 72)
    assert numbers_match(0.3333333, 1 / 3, rel_tol=1e-4)
    assert not numbers_match(72.0, 73.0)
    assert not numbers_match(None, 3.0)
    assert not numbers_match(3.0, None)


def test_format_reward_strict_pattern():
    good = "<think>48/2 = 24, 48 + 24 = 72</think>\n<answer>72</answer>"
    assert format_reward([good, "72", "<answer>72</answer>", "<think>x</think><answer>1</answer> trailing"]) == [
        1.0, 0.0, 0.0, 0.0,
    ]
    # chat-format completions (list of messages) are read from their last message
    assert format_reward([[{"role": "assistant", "content": good}]]) == [1.0]


def test_format_reward_one_for_well_formed_zero_otherwise():
    good = ["<think>3 + 4 = 7</think><answer>7</answer>", "  <think>\nmulti\nline\n</think>\n\n<answer> 7 </answer>\n"]
    bad = [
        "<think>3 + 4 = 7</think>",  # no answer
        "<answer>7</answer><think>late</think>",  # wrong order
        "<think>3 + 4 = 7<answer>7</answer>",  # think never closed
        "<think>x</think><answer>7",  # answer never closed (truncated)
        "Sure! <think>x</think><answer>7</answer>",  # text before the think block
        "The answer is 7.",
    ]
    assert format_reward(good + bad) == [1.0] * len(good) + [0.0] * len(bad)


def test_correctness_prefers_the_answer_tag_over_other_numbers():
    completions = [
        "<think>#### 7 and \\boxed{7}; the answer is 7</think><answer>12</answer> 7",
        "<think>maybe 12</think><answer>7</answer> then 12",
        "<think>it is 12</think><answer>no idea</answer>",  # a tag without a number scores 0, not the 12
    ]
    assert correctness_reward(completions, answer=["#### 12"] * 3) == [1.0, 0.0, 0.0]


def test_custom_format_reward():
    r = make_format_reward(r".*#### -?\d+\s*$", name="gsm_format")
    assert r.__name__ == "gsm_format"
    assert r(["so #### 12", "so 12"]) == [1.0, 0.0]


def test_correctness_reward_reads_answer_column():
    completions = ["<think>..</think><answer>72</answer>", "The answer is 1,234 dollars", "I don't know", "-3"]
    answers = ["Natalia ... #### 72", "1234", "5", "#### -3"]
    assert correctness_reward(completions, answer=answers, prompts=["p"] * 4) == [1.0, 1.0, 0.0, 1.0]


def test_correctness_reward_without_answer_column_says_what_to_add():
    with pytest.raises(ValueError, match="answer"):
        correctness_reward(["42"])
