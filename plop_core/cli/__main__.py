"""`python -m plop_core.cli ...` is the same as `plop ...`."""

import sys

from plop_core.cli import main

sys.exit(main())
