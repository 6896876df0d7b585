"""The GPU check command (scripts/gpu_check.sh) in its CPU mode, so that it cannot rot without a GPU in CI.

The slow test runs the whole command on tiny models (about a minute and a half on an idle 2-core machine) and
checks the JSON it writes: the schema, every check passed within its stated tolerance, the benchmark rows
consistent with their own figures. The fast tests check the comparison measures and the usage errors.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
CHECK_KEYS = {"name", "passed", "max_rel_diff", "detail"}
BENCH_KEYS = {
    "model", "workload", "variant", "attn", "dtype", "pairs", "step_s", "samples_per_s", "tokens_per_s", "mfu",
    "peak_mem_gib",
}  # fmt: skip
# The largest difference each kind of check may show (the tolerances the issue sets).
LIMITS = {"parity/float32": 1e-5, "parity/bfloat16": 1e-3, "layouts/bf16/": 2e-2, "": 1e-5}


def _env(tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir(exist_ok=True)
    return {
        **os.environ,
        "PYTHON": sys.executable,
        "TRL_IPO_WHEELS": str(empty),  # the environment's own packages, even where a .whl/ folder exists
        "PYTHONPATH": str(REPO),
    }


def _limit(name):
    return next(v for k, v in LIMITS.items() if name.startswith(k))


@pytest.mark.slow
def test_cpu_tiny_run_writes_the_schema_and_every_check_passes(tmp_path):
    out = tmp_path / "out"
    cmd = ["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "cuda-check.json").read_text())

    assert report["device"].endswith("(cpu)")
    assert {"torch", "cuda", "transformers", "trl", "deepspeed"} <= report["versions"].keys()
    assert report["gemm_tflops"] > 0
    assert "not a GPU" in report["gemm"]["label"]

    checks = {c["name"]: c for c in report["checks"]}
    assert len(checks) == len(report["checks"])
    expected = {"parity/float32", "parity/bfloat16", "precompute_ref_log_probs", "zero3/zero3"}
    expected |= {"zero3/zero3+prefix_sharing"}
    for family in ("qwen2", "llama", "gemma3"):
        for attn in ("sdpa", "eager", "flex_attention"):
            expected |= {f"layouts/{family}-tiny/{attn}/{layout}" for layout in ("S", "Pf", "SP")}
    expected |= {f"layouts/bf16/qwen2-tiny/{attn}/SP" for attn in ("sdpa", "eager", "flex_attention")}
    assert expected == set(checks)
    for name, check in checks.items():
        assert check.keys() >= CHECK_KEYS, check
        assert check["passed"] is True, check
        if check.get("skipped"):  # only flex attention, whose backward torch does not run on CPU
            assert "flex_attention" in name, check
            assert "CPU" in check["detail"], check
            continue
        assert 0 <= check["max_rel_diff"] <= check["tolerance"] <= _limit(name), check
    assert (
        "bit-identical" in checks["parity/bfloat16"]["detail"]
        or "not bit-identical" in (checks["parity/bfloat16"]["detail"])
    )
    zero3 = checks["zero3/zero3"]["detail"]
    assert "DeepSpeedEngine, ZeRO stage 3" in zero3
    assert "ds_shape" in zero3
    assert "numel() 0" in zero3

    rows = report["bench"]
    assert {(r["variant"], r["attn"]) for r in rows} >= {("B", "sdpa"), ("A", "sdpa"), ("S", "sdpa"), ("Pf", "sdpa")}
    assert len({(r["model"], r["workload"]) for r in rows}) == 1  # one benchmark row in --tiny mode
    for r in rows:
        assert r.keys() >= BENCH_KEYS
        assert r["samples_per_s"] == pytest.approx(r["pairs"] / r["step_s"])
        assert r["mfu"] == pytest.approx(r["achieved_tflops"] / report["gemm_tflops"])
        assert r["peak_mem_gib"] > 0
        assert r["tokens_per_s"] > r["samples_per_s"]
    (target,) = report["targets"]
    best = next(r for r in rows if f"{r['variant']}/{r['attn']}" == target["best"])
    b = next(r for r in rows if r["variant"] == "B")
    assert target["speedup_vs_B"] == pytest.approx(best["samples_per_s"] / b["samples_per_s"])
    assert (report["profile"] is None) == (target["met"] and target["memory_met"])

    markdown = (out / "cuda-check.md").read_text()
    assert all(name in markdown for name in checks)


def test_comparison_measures_see_a_difference():
    from benchmarks.gpucheck.report import entry
    from benchmarks.gpucheck.runs import Run, grads_diff, history_diff, rel_diff

    grads_a = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([1e-9])}
    grads_b = {"w": torch.tensor([3.0, 4.0 + 5e-4]), "b": torch.tensor([-1e-9])}
    a = Run([{"loss": 25.0, "ipo/delta": 0.5}], [grads_a])
    b = Run([{"loss": 25.0 * (1 + 2e-5), "ipo/delta": 0.5}], [grads_b])
    loss, where = history_diff(a, b, keys=("loss",), floor=0.0)
    assert loss == pytest.approx(2e-5)
    assert "loss" in where
    whole, where = grads_diff(a, b)
    assert whole == pytest.approx(1e-4, rel=1e-3)  # ‖(0, 5e-4, 2e-9)‖ / ‖(3, 4, 1e-9)‖, in fp32
    assert where.startswith("step 1 b: 2 ")  # the noise-only tensor is named, but is not the criterion
    assert history_diff(a, Run([{"loss": 25.0}]))[0] == math.inf  # a metric logged by one run only
    assert rel_diff(0.001, 0.002, floor=1.0) == pytest.approx(1e-3)  # small values: absolute difference
    assert entry("x", loss, 1e-5, "")["passed"] is False
    assert entry("x", 9e-6, 1e-5, "")["passed"] is True
    assert entry("x", math.nan, 1e-5, "")["passed"] is False


def test_usage_errors_exit_2(tmp_path):
    bad = subprocess.run(["bash", str(SCRIPT), "--gpus", "2"], capture_output=True, text=True, env=_env(tmp_path))
    assert bad.returncode == 2
    assert "unknown option '--gpus'" in bad.stderr
    bad = subprocess.run(["bash", str(SCRIPT), "--device", "tpu"], capture_output=True, text=True, env=_env(tmp_path))
    assert bad.returncode == 2
    assert "cuda or cpu" in bad.stderr
    if not torch.cuda.is_available():
        from benchmarks.gpucheck.cli import main

        assert main(["--out", str(tmp_path / "o")]) == 2  # --device cuda (the default) without a GPU
        assert not (tmp_path / "o").exists()
