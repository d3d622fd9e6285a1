"""Write the study's local task files (committed under docs/study/data/; rerunning rewrites them byte for byte).

Usage (repo root, venv, `source .ci/env.sh`, models fetched under $PLOP_HOME):
    .venv/bin/python benchmarks/study/make_data.py

Why files: a sweep has one `sampling` section, so the sample-size study (point 2 of issue 13: 5 sample
seeds x n sequences) cannot vary seed and n inside one sweep YAML. Each (n, seed) sample becomes a local
task file instead, holding exactly the scoring texts that plop's own sampler draws for
`sample_task("gsm8k", n, seed, split="train", source="offline")`; one sweep then scores all of them with a
single model load per model (`study-stability-n*.yaml`, `sampling.split: all`, `allow_smaller: true`, so
every row of each file is scored). plop's sampler is nested (the n=8 sample of a seed is the first 8 rows
of its n=16 sample), exactly as a user who grows n would see it.

Question only (point 5): the study-nfn-maps gsm8k sample with each row's question alone, so that
scoring on question-only text can be compared cell for cell with the question-plus-answer text.

Random tokens (point 3): 128 texts of 128 token ids drawn uniformly (numpy seed 13) from SmolLM2-135M's
vocabulary without its special tokens, decoded to text. Every model re-tokenizes the same text; for
Gemma-3 and Qwen2.5 it is still random sub-word soup, not the model's own token distribution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "study" / "data"
N_VALUES = (8, 16, 32, 64, 128, 256, 512)
SEEDS = (0, 1, 2, 3, 4)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))


def stability_files() -> None:
    from plop_core.data import resolve_task, sample_task

    spec = resolve_task("gsm8k")
    for seed in SEEDS:
        for n in N_VALUES:
            s = sample_task(spec, n=n, seed=seed, split="train", source="offline")
            rows = [{"id": f"gsm8k-{r['id']}", "text": t} for r, t in zip(s.rows, s.texts, strict=True)]
            write_jsonl(OUT / f"gsm8k-n{n}-s{seed}.jsonl", rows)


def question_only_file(n: int = 128, seed: int = 0) -> None:
    """The study-nfn-maps gsm8k sample (same rows, same order) with the question only: the scoring text
    without the worked answer (point 5: question-only vs question-plus-answer text for scoring)."""
    from plop_core.data import resolve_task, sample_task

    s = sample_task(resolve_task("gsm8k"), n=n, seed=seed, split="train", source="offline")
    write_jsonl(OUT / f"gsm8k-questions-n{n}-s{seed}.jsonl",
                [{"id": f"gsm8k-{r['id']}", "text": r["question"]} for r in s.rows])


def random_token_file(n_texts: int = 128, n_tokens: int = 128, seed: int = 13) -> None:
    from transformers import AutoTokenizer

    home = Path(os.environ.get("PLOP_HOME", ROOT / ".plop"))
    tok = AutoTokenizer.from_pretrained(home / "assets" / "smollm2-135m-instruct")
    special = set(tok.all_special_ids)
    vocab = np.array([i for i in range(len(tok)) if i not in special])
    rng = np.random.default_rng(seed)
    rows = [{"id": f"rand-{i}", "text": tok.decode(rng.choice(vocab, size=n_tokens).tolist())} for i in range(n_texts)]
    write_jsonl(OUT / "random-tokens.jsonl", rows)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    stability_files()
    question_only_file()
    random_token_file()
    print(f"wrote {len(list(OUT.glob('*.jsonl')))} files under {OUT.relative_to(ROOT)}")
