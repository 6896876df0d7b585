#!/usr/bin/env bash
# Run the `compat` tests (pytest -m compat) against every supported (trl, transformers) pair and record the matrix.
#
#   bash scripts/compat.sh                       # all pairs; writes docs/install.md's matrix and docs/assets/compat.json
#   COMPAT_PAIRS="1.15.0:5.25.0" bash scripts/compat.sh -x   # one pair; extra arguments go to pytest
#
# One base environment holds torch and the rest of constraints.txt (built once, reused while constraints.txt and
# setup.cfg's requirements are unchanged). Each pair is a small environment layered on it: it sees the base's packages
# and installs only what differs (trl, transformers and anything the newer transformers adds). trl_ipo itself is
# imported from this checkout (PYTHONPATH), so the environments serve every branch and worktree. A cold run (base
# built from the local torch wheel) takes about 6.5 minutes on 2 shared cores, a warm one under 5;
# `rm -rf ~/.cache/trl_ipo-compat` starts afresh. Exit status 1 when any pair has a failing test.
#
# Environment:
#   COMPAT_PAIRS        space-separated TRL:TRANSFORMERS pairs (default: the four supported ones)
#   COMPAT_CACHE        where the environments live (default: ~/.cache/trl_ipo-compat)
#   COMPAT_BASE_PYTHON  use this interpreter's environment as the base instead of building one (e.g. .venv/bin/python)
#   COMPAT_RECORD       1 (default when every pair is run): write the matrix into docs; 0: only print it
#   COMPAT_JOBS         pairs tested at a time (default 2); COMPAT_THREADS: torch threads per run (default 1 when
#                       JOBS > 1, else every core)
#   PYTHON              interpreter the base environment is created from (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEFAULT_PAIRS="1.15.0:5.24.0 1.15.0:5.25.0 1.16.0:5.24.0 1.16.0:5.25.0"
PAIRS=${COMPAT_PAIRS:-$DEFAULT_PAIRS}
CACHE=${COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/trl_ipo-compat}
RECORD=${COMPAT_RECORD:-$([ "$PAIRS" = "$DEFAULT_PAIRS" ] && echo 1 || echo 0)}
RESULTS=$CACHE/results
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=offline \
    TOKENIZERS_PARALLELISM=false
mkdir -p "$CACHE" "$RESULTS"
start_all=$(date +%s)
BASE_SECONDS=0

# pip's output without the notes about unreadable local index folders; its exit status is kept.
quiet_pip() {
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    grep -v "^WARNING: Location" <<<"$out" || true
    return "$rc"
}

# ------------------------------------------------------------------------------------------------ base environment
# Everything trl_ipo[dev] needs, at the constraints.txt versions (its trl and transformers are the pinned pair).
requirements() {
    "${PYTHON:-python3}" - "$ROOT/setup.cfg" <<'EOF'
import configparser, sys
cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
lines = cfg["options"]["install_requires"].split("\n") + cfg["options.extras_require"]["dev"].split("\n")
print("\n".join(sorted({line.strip() for line in lines if line.strip()})))
EOF
}
if [ -n "${COMPAT_BASE_PYTHON:-}" ]; then
    BASE_PY=$(cd "$(dirname "$COMPAT_BASE_PYTHON")" && pwd)/$(basename "$COMPAT_BASE_PYTHON")
else
    stamp=$( (cat constraints.txt; requirements) | sha256sum | cut -c1-16)
    BASE=$CACHE/base-$stamp
    BASE_PY=$BASE/bin/python
    if [ ! -f "$BASE/.complete" ]; then
        echo "compat: building the base environment $BASE"
        rm -rf "$BASE"
        "${PYTHON:-python3}" -m venv "$BASE"
        requirements > "$BASE/requirements.txt"
        # torch first: `torch==2.13.0` takes the CPU build; a bare `torch` would pull a multi-GB CUDA build.
        quiet_pip "$BASE_PY" -m pip install -q "$(grep '^torch==' constraints.txt)"
        quiet_pip "$BASE_PY" -m pip install -q -c constraints.txt -r "$BASE/requirements.txt"
        touch "$BASE/.complete"
        BASE_SECONDS=$(($(date +%s) - start_all))
    fi
fi
BASE_SITE=$("$BASE_PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# ------------------------------------------------------------------------------------------- one pair's environment
# A venv whose site-packages come first and which then reads the base's site-packages (a .pth line), so pip installs
# into it only what the pair changes. Versions other than the pair's come from constraints.txt.
pair_env() {
    local trl=$1 tf=$2 env
    env=$CACHE/pair-trl$trl-tf$tf-$(echo "$BASE_SITE" | sha256sum | cut -c1-8)
    if [ ! -f "$env/.complete" ]; then
        rm -rf "$env"
        "$BASE_PY" -m venv --without-pip "$env" >&2
        local site
        site=$("$env/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        echo "import site; site.addsitedir('$BASE_SITE')" > "$site/zz_compat_base.pth"
        grep -v -E '^(trl|transformers)==' constraints.txt > "$env/constraints.txt"
        if ! quiet_pip "$env/bin/python" -m pip install -q -c "$env/constraints.txt" "trl==$trl" "transformers==$tf" >&2
        then
            rm -rf "$env"
            return 1
        fi
        touch "$env/.complete"
    fi
    echo "$env/bin/python"
}

# ------------------------------------------------------------------------------------------------------ the runs
# Pairs run JOBS at a time, each pytest on one thread (on 2 cores two single-threaded runs beat two that contend).
mapfile -t FILES < <(grep -l "pytest.mark.compat" tests/test_*.py)
run_pair() {
    local trl=$1 tf=$2 name=trl$1-tf$2 py got rc t0 t1 t2
    shift 2
    t0=$(date +%s)
    got=none
    if py=$(pair_env "$trl" "$tf" 2>"$RESULTS/$name.log"); then
        got=$("$py" -c "import trl, transformers; print(trl.__version__, transformers.__version__)" || true)
    fi
    if [ "$got" != "$trl $tf" ]; then
        echo "compat: no environment for trl $trl / transformers $tf (it imports: $got)" >>"$RESULTS/$name.log"
        tail -n 5 "$RESULTS/$name.log"
        echo "$trl $tf 0 1 $RESULTS/$name.xml $RESULTS/$name.log" >"$RESULTS/$name.row"
        return
    fi
    t1=$(date +%s)
    rm -f "$RESULTS/$name.xml"
    rc=0
    PYTHONPATH=$ROOT OMP_NUM_THREADS=$THREADS "$py" -m pytest -q -p no:cacheprovider -m compat \
        --junitxml="$RESULTS/$name.xml" "${FILES[@]}" "$@" >"$RESULTS/$name.log" 2>&1 || rc=$?
    t2=$(date +%s)
    echo "compat: trl $trl, transformers $tf: $(tail -n 1 "$RESULTS/$name.log") (environment $((t1 - t0)) s)"
    [ "$rc" -eq 0 ] || grep -E "^(FAILED|ERROR) " "$RESULTS/$name.log" || tail -n 20 "$RESULTS/$name.log"
    echo "$trl $tf $((t2 - t1)) $rc $RESULTS/$name.xml $RESULTS/$name.log" >"$RESULTS/$name.row"
}
JOBS=${COMPAT_JOBS:-2}
THREADS=${COMPAT_THREADS:-$([ "$JOBS" -gt 1 ] && echo 1 || nproc)}
declare -a ROWS=()
running=0
for pair in $PAIRS; do
    rm -f "$RESULTS/trl${pair%%:*}-tf${pair##*:}.row"
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    run_pair "${pair%%:*}" "${pair##*:}" "$@" &
    running=$((running + 1))
done
wait
status=0
for pair in $PAIRS; do
    row=$(cat "$RESULTS/trl${pair%%:*}-tf${pair##*:}.row" 2>/dev/null || echo "${pair%%:*} ${pair##*:} 0 1 none none")
    ROWS+=("$row")
    [ "$(echo "$row" | cut -d' ' -f4)" = 0 ] || status=1
done

# ------------------------------------------------------------------------------------------------ the matrix
"$BASE_PY" - "$ROOT" "$RECORD" "$(($(date +%s) - start_all))" "$BASE_SECONDS" "${ROWS[@]}" <<'EOF'
import json, platform, re, sys, xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

root, record, total, base_seconds = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
rows = []
for spec in sys.argv[5:]:
    trl, tf, seconds, rc, xml, log = spec.split(" ")
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    if Path(xml).is_file():
        for case in ET.parse(xml).iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            if case.find("failure") is not None or case.find("error") is not None:
                counts["failed"] += 1
                failures.append(name)
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    else:  # pytest stopped before writing its report (e.g. an import error): count it as one failure
        counts["failed"] = 1
        failures.append(Path(log).read_text().strip().splitlines()[-1] if Path(log).is_file() else "no report")
    rows.append({"trl": trl, "transformers": tf, **counts, "seconds": int(seconds), "failures": failures})

lines = ["| trl | transformers | passed | failed | skipped | time |", "|---|---|---|---|---|---|"]
for r in rows:
    lines.append(
        f"| {r['trl']} | {r['transformers']} | {r['passed']} | {r['failed']} | {r['skipped']} | {r['seconds']} s |"
    )
table = "\n".join(lines)
print(table)
built = f", the base environment built in {base_seconds} s" if base_seconds else " (base environment reused)"
print(f"compat: {total} s in all{built}")
passed, failed = sum(r["passed"] for r in rows), sum(r["failed"] for r in rows)
print(f"compat: {passed} passed, {failed} failed")
if record:
    import torch

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    report = {
        "date": stamp,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "constraints": [l for l in (root / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")],
        "test_selection": "pytest -m compat",
        "total_seconds": total,
        "base_build_seconds": base_seconds,
        "pairs": rows,
    }
    out = root / "docs" / "assets" / "compat.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    page = root / "docs" / "install.md"
    text = page.read_text()
    start, end = "<!-- compat-matrix:start -->", "<!-- compat-matrix:end -->"
    block = f"{start}\n{table}\n\n`bash scripts/compat.sh`, {stamp}, torch {torch.__version__}, {total} s in all{built}.\n{end}"
    if start in text and end in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.write_text(text)
    print(f"compat: wrote {out.relative_to(root)} and the matrix in {page.relative_to(root)}")
EOF
exit $status
