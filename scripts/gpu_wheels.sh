#!/usr/bin/env bash
# Fill .whl/ with the wheels scripts/gpu_check.sh installs on a GPU machine without network:
#
#   bash scripts/gpu_wheels.sh            # run where the package index can be reached, from the repository root
#
# The GPU image has torch, transformers, accelerate, peft and triton, and the packages they pull in (numpy,
# packaging, pyyaml, requests, tqdm, huggingface_hub with filelock, safetensors, tokenizers, psutil, jinja2,
# typing_extensions). Missing there, and fetched here at the versions of constraints.txt and of the development
# environment: trl, datasets and deepspeed, and what those need that the image lacks:
#   datasets  -> pyarrow, pandas (with python-dateutil, tzdata), dill, multiprocess, xxhash, fsspec
#   deepspeed -> pydantic (pydantic_core, annotated_types, typing_inspection, and typing_extensions >= 4.16),
#                hjson, py-cpuinfo, msgpack, einops
# (each checked with `unzip -p X.whl '*/METADATA' | grep ^Requires-Dist`). Left out on purpose:
#   wandb   the check logs to nothing (report_to="none"); with its own dependencies it would add ~25 MiB;
#   ninja   the GPU machine has the ninja binary, which is what DeepSpeed's op builder runs.
# DeepSpeed is source-only on PyPI: its wheel is built here without compiled ops (DS_BUILD_OPS=0); the few ops a
# run needs are compiled on first use on the GPU machine (nvcc and ninja are there).
#
# Size: everything together must stay under 60 MiB (the folder travels with the checkout). pyarrow's wheel alone is
# 52 MiB, so it is slimmed: its Flight RPC, S3 and C++ test libraries, C++ headers and Cython sources are dropped
# (datasets and the check use none of them; they load only on `import pyarrow.flight` or an s3:// path) and the
# wheel's RECORD is rewritten to match. The total is printed at the end.
#
# Environment: PYTHON_VERSION (default 3.12, the GPU image's) picks the wheels' Python; WHEEL_DIR (default .whl).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-python3}"
PYVER="${PYTHON_VERSION:-3.12}"
DEST="${WHEEL_DIR:-.whl}"
LIMIT_MIB=60
pin() { grep -E "^$1==" constraints.txt | cut -d= -f3; }

# Top-level packages at the versions of constraints.txt; their dependencies at the versions the development
# environment was tested with.
PACKAGES=(
    "trl==$(pin trl)" "datasets==$(pin datasets)"
    pyarrow==26.0.1 pandas==3.1.1 python-dateutil==4.0.0 tzdata==2026.6
    dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 fsspec==2026.9.0
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    hjson==3.1.0 py-cpuinfo==9.0.0 msgpack==1.2.4 einops==0.8.2
)
rm -rf "$DEST"
mkdir -p "$DEST"
echo "gpu_wheels.sh: downloading ${#PACKAGES[@]} wheels for CPython $PYVER, manylinux x86_64"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "${PACKAGES[@]}"
echo "gpu_wheels.sh: building the deepspeed $(pin deepspeed) wheel (no compiled ops)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps "deepspeed==$(pin deepspeed)" -w "$DEST"

"$PY" - "$DEST" <<'PYEOF'
"""Rewrite the pyarrow wheel without what neither datasets nor the check loads; RECORD lists what is left."""
import re
import sys
import zipfile
from pathlib import Path

DROP = re.compile(
    r"^pyarrow/("
    r"include/|includes/|src/|tests/"  # C++ headers, Cython declarations and sources, the test suite
    r"|.*\.(pyx|pxd|pxi|h|hpp|cc)$"
    r"|.*flight.*"  # Arrow Flight RPC: libarrow_flight, libarrow_python_flight, pyarrow._flight
    r"|.*_s3.*"  # the S3 filesystem: libarrow_s3, pyarrow._s3fs (loaded only for s3:// paths)
    r"|_pyarrow_cpp_tests.*"
    r"|lib\w+\.so(\.\d+\.\d+\.\d+)?$"  # unversioned / fully versioned copies of libs the modules load as .so.NNNN
    r")"
)
for wheel in Path(sys.argv[1]).glob("pyarrow-*.whl"):
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        keep = [i for i in zin.infolist() if not DROP.match(i.filename)]
        names = {i.filename for i in keep}
        for info in keep:
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = [ln for ln in data.decode().splitlines() if ln.split(",")[0] in names]
                data = ("\n".join(lines) + "\n").encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    before, after = wheel.stat().st_size, slim.stat().st_size
    slim.replace(wheel)
    print(f"gpu_wheels.sh: {wheel.name}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB, {len(keep)} files kept")
PYEOF

TOTAL=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
ls -l "$DEST"
echo "gpu_wheels.sh: $(ls "$DEST"/*.whl | wc -l) wheels, $(( TOTAL / 1048576 )) MiB in $DEST"
if (( TOTAL > LIMIT_MIB * 1048576 )); then
    echo "gpu_wheels.sh: over the $LIMIT_MIB MiB limit" >&2
    exit 1
fi
