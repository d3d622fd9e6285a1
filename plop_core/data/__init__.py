"""Task (dataset) registry, sources and sampling: what text PLoP scores and what the finetunes train on.

    from plop_core.data import get_task, list_tasks, sample_task, resolve_task
    spec = get_task("gsm8k")                     # a TaskSpec: sources, splits, rendering, metric
    rows = spec.load("train")                    # offline: carved 80/20 from GSM8K test by row-id hash
    sample = sample_task("gsm8k", n=128, seed=0) # deterministic by seed, stratified, content-hashed
    sample.token_stats(tokenizer, max_length=256); sample.to_parquet("sample.parquet")
    resolve_task("my.jsonl", prompt_column="q", answer_column="a")   # a local file as a task

Registered: gsm8k, math, arithmetic, arithmetic_small (math); humaneval, mbpp (code); mmlu, mmlu_stem (knowledge);
rte, cb, boolq (nli). See docs/tasks.md for each task's splits.
"""

from plop_core.data import code, knowledge, math, nli  # noqa: F401  (registers the tasks)
from plop_core.data.custom import ColumnError, hub_task, local_task, resolve_task
from plop_core.data.knowledge import mmlu_task
from plop_core.data.math import arithmetic_problems, arithmetic_task, last_boxed, parse_number
from plop_core.data.registry import TaskSpec, UnknownTaskError, get_task, list_tasks, register_task
from plop_core.data.sampling import Sample, load_rows, sample_hash, sample_task
from plop_core.data.sources import DataSourceError, hub_is_offline

__all__ = [
    "ColumnError", "DataSourceError", "Sample", "TaskSpec", "UnknownTaskError", "arithmetic_problems",
    "arithmetic_task", "get_task", "hub_is_offline", "hub_task", "last_boxed", "list_tasks", "load_rows",
    "local_task", "mmlu_task", "parse_number", "register_task", "resolve_task", "sample_hash", "sample_task",
]
