"""Paste the generated tables into docs/study.md between their markers, so the prose and the data agree.

Usage (repo root, after the analysis scripts):
    .venv/bin/python benchmarks/study/make_doc.py
Every `<!-- table:NAME -->` ... `<!-- /table:NAME -->` block of docs/study.md is replaced by
docs/study/tables/NAME.md (which starts with the command that generated it). Text outside the markers
is left alone.
"""

from __future__ import annotations

import re

from common import FIGS, TABLES

DOC = FIGS.parent / "study.md"


def main() -> None:
    text = DOC.read_text()

    def fill(m: re.Match) -> str:
        name = m.group(1)
        path = TABLES / f"{name}.md"
        body = path.read_text().strip() if path.exists() else "(not generated yet)"
        return f"<!-- table:{name} -->\n{body}\n<!-- /table:{name} -->"

    new = re.sub(r"<!-- table:(\w+) -->.*?<!-- /table:\1 -->", fill, text, flags=re.S)
    DOC.write_text(new)
    print(f"filled {len(re.findall(r'<!-- table:', new))} tables in docs/study.md")


if __name__ == "__main__":
    main()
