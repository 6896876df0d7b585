#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) with the tested package versions.
# torch goes in first: `torch==2.13.0` takes the local CPU build; a bare `torch` would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q -c constraints.txt -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch, trl, trl_ipo; print(f'environment ready: torch {torch.__version__}, trl {trl.__version__}, trl_ipo {trl_ipo.__version__}')"
