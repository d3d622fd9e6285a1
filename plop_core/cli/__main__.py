"""`python -m plop_core.cli ...`: the library's commands (`plop` without `plop sweep`, which flows/cli.py adds)."""

import sys

from plop_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
