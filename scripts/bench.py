#!/usr/bin/env python
"""Step time and memory of IPOTrainer against TRL's own IPO, the bare model compute and precomputed references.

The benchmark itself is the ``benchmarks`` package at the repository root (see ``benchmarks/__init__.py``); this
script is its command line, the same as ``python -m benchmarks``::

    python scripts/bench.py --tiny --out /tmp/b.json
    python scripts/bench.py --device cuda --out benchmarks/cuda-h200.json
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.cli import main  # the repository root is on sys.path only now

if __name__ == "__main__":
    sys.exit(main())
