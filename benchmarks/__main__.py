"""``python -m benchmarks``: the same command line as ``python scripts/bench.py``."""

import sys

from benchmarks.cli import main

sys.exit(main())
