#!/usr/bin/env bash
# The GPU check of trl_ipo, in one call from the repository root:
#
#   bash scripts/gpu_check.sh [--out DIR] [--quick] [--device cuda|cpu] [--tiny]
#
# On a machine with one CUDA GPU whose image has torch, transformers, accelerate, peft and triton but not trl,
# datasets or deepspeed and no network: first run `bash scripts/gpu_wheels.sh` on a machine with the package index
# (it fills .whl/), bring .whl/ along with the checkout, then run this. The wheels go into a private folder
# (/tmp/trl_ipo_site/site-packages, put first on PYTHONPATH): the image's torch and CUDA stay as they are. Without .whl/ (e.g.
# `--device cpu --tiny` in a development environment) the installed packages are used.
#
# Writes DIR/cuda-check.json and DIR/cuda-check.md (default outputs/gpu_check) and exits non-zero when a check
# failed. Sized for 8 minutes on an H200 with the install, 3 with --quick (checks 2-4 and one benchmark row);
# benchmark rows that would overrun are skipped and listed. docs/gpu-check.md describes every check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

OUT=outputs/gpu_check
DEVICE=cuda
QUICK=0
TINY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
        --out=*) OUT="${1#--out=}"; shift ;;
        --device) DEVICE="${2:?--device needs cuda or cpu}"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        --quick) QUICK=1; shift ;;
        --tiny) TINY=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [[ "$DEVICE" != cuda && "$DEVICE" != cpu ]]; then
    echo "gpu_check.sh: --device must be cuda or cpu, got '$DEVICE'" >&2
    exit 2
fi

START=$(date +%s)
PY="${PYTHON:-python3}"
# The private folder's path must contain "site-packages": dill, which datasets uses to fingerprint its tables,
# pickles any module found elsewhere (outside sys.prefix) by value, and fails on pyarrow's types.
SITE=/tmp/trl_ipo_site/site-packages
shopt -s nullglob
WHEELS=("${TRL_IPO_WHEELS:-.whl}"/*.whl)  # TRL_IPO_WHEELS: another wheel folder (an empty one: no install)
shopt -u nullglob
if [[ ${#WHEELS[@]} -gt 0 ]]; then
    # Reinstalled only when the wheels changed (a rerun on the same machine skips the ~20 s install).
    STAMP="$(ls -l "${WHEELS[@]}" | md5sum | cut -c1-32)"
    if [[ ! -f "$SITE/.stamp" || "$(cat "$SITE/.stamp")" != "$STAMP" ]]; then
        echo "gpu_check.sh: installing ${#WHEELS[@]} wheels from ${TRL_IPO_WHEELS:-.whl}/ into $SITE"
        rm -rf "$SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${WHEELS[@]}"
        echo "$STAMP" > "$SITE/.stamp"
    fi
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export PATH="$SITE/bin:$PATH"
else
    echo "gpu_check.sh: no wheels in ${TRL_IPO_WHEELS:-.whl}/: using the installed packages"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1 DS_BUILD_OPS=0
if [[ "$DEVICE" == cpu ]]; then
    export DS_ACCELERATOR=cpu
fi

"$PY" - <<'PYEOF'
import platform
from importlib import metadata

import torch

names = ("transformers", "trl", "datasets", "accelerate", "deepspeed", "peft", "pyarrow")
found = {}
for name in names:
    try:
        found[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        found[name] = "MISSING"
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"gpu_check.sh: python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}, GPU {gpu})")
print("gpu_check.sh: " + ", ".join(f"{k} {v}" for k, v in found.items()))
pins = dict(line.split("==") for line in open("constraints.txt").read().split() if "==" in line)
off = [f"{k} {v} (constraints.txt: {pins[k]})" for k, v in found.items() if k in pins and v != pins[k]]
if off:
    print("gpu_check.sh: not the pinned versions: " + "; ".join(off))
PYEOF

# The whole run, install included, ends by START + 8 minutes (3 with --quick), less a margin for writing the files:
# benchmark rows that would end later are skipped.
if [[ $QUICK == 1 ]]; then TOTAL=180; else TOTAL=480; fi
ARGS=(--out "$OUT" --device "$DEVICE" --deadline "$(( START + TOTAL - 15 ))")
[[ $QUICK == 1 ]] && ARGS+=(--quick)
[[ $TINY == 1 ]] && ARGS+=(--tiny)
set +e
"$PY" -m benchmarks.gpucheck "${ARGS[@]}"
CODE=$?
set -e
echo "gpu_check.sh: finished in $(( $(date +%s) - START )) s with exit code $CODE"
exit $CODE
