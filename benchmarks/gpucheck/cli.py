"""``python -m benchmarks.gpucheck``: run the checks and the benchmark, write ``cuda-check.json`` and
``cuda-check.md``; exit 1 when a check failed (after writing them), 2 on a usage error."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.gpucheck import report as rep
from benchmarks.gpucheck.settings import FULL_BUDGET_S, QUICK_BUDGET_S, CheckConfig


def parse_args(argv=None) -> CheckConfig:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpucheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/gpu_check", help="folder for cuda-check.json and cuda-check.md")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="the same checks on tiny models, a one-row benchmark")
    p.add_argument("--quick", action="store_true", help="checks 2-4 and one benchmark row")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help=f"seconds this run may take from its start (benchmark rows that would not fit are skipped; default "
        f"{FULL_BUDGET_S}, {QUICK_BUDGET_S} with --quick)",
    )
    p.add_argument("--deadline", type=float, default=None, help="the same as a UNIX time (what gpu_check.sh passes)")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (tiny models run fastest on one)")
    a = p.parse_args(argv)
    budget = a.budget_s if a.budget_s is not None else (QUICK_BUDGET_S if a.quick else FULL_BUDGET_S)
    deadline = a.deadline if a.deadline is not None else time.time() + budget
    cfg = CheckConfig(
        device=a.device, tiny=a.tiny, quick=a.quick, out=Path(a.out), deadline=deadline, threads=a.threads
    )
    cfg.workdir = Path(a.workdir) if a.workdir else None
    return cfg


def _quiet() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _guarded(name, fn, *args):
    """Run one check; an exception becomes a failed entry, so the other checks and the files still come."""
    try:
        out = fn(*args)
        return out if isinstance(out, list) else [out]
    except Exception as err:
        import traceback

        traceback.print_exc()
        return [rep.failed(name, err)]


def _set_up_torch(cfg: CheckConfig) -> bool:
    """Threads and compile cache for the run; False (with the reason printed) when the device is not there."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda needs a CUDA GPU, but torch.cuda.is_available() is False "
              "(use --device cpu --tiny to run the checks on CPU).", file=sys.stderr)  # fmt: skip
        return False
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    # transformers compiles flex attention once per process; every new mask function, shape or dtype recompiles it.
    # The checks and the benchmark make a few dozen such variants: past dynamo's default limit of 8 recompiles it
    # would fall back to eager flex attention, which materialises the full score matrix (slow, and out of memory
    # for the 1.5B rows).
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    return True


def _cpu_seconds(before: os.times_result, after: os.times_result) -> float:
    """CPU seconds of this process and its children between two ``os.times()``."""
    return (after.user + after.system + after.children_user + after.children_system) - (
        before.user + before.system + before.children_user + before.children_system
    )


def _summarise(report: dict, checks: list[dict], json_path, md_path) -> int:
    """Print where the report went, the targets and the failed checks; the exit code (1 when a check failed)."""
    failed_names = [c["name"] for c in checks if not c["passed"]]
    print(f"gpu_check: wrote {json_path} and {md_path} ({report['wall_s']:.0f} s, {report['cpu_s']:.0f} CPU s)")
    for t in report["targets"]:
        print(f"gpu_check: target {t['model']} {t['workload']}: best {t['best']} {t['speedup_vs_B']:.2f}x B "
              f"(>= {t['target']}: {'met' if t['met'] else 'missed'}), memory {t['memory_vs_B']:.2f}x B")  # fmt: skip
    if failed_names:
        print(f"gpu_check: {len(failed_names)} check(s) FAILED: {', '.join(failed_names)}", file=sys.stderr)
        return 1
    print(f"gpu_check: all {len(checks)} checks passed")
    return 0


def main(argv=None) -> int:
    cfg = parse_args(argv)
    if not _set_up_torch(cfg):
        return 2
    _quiet()
    from benchmarks.gpucheck.bench import run_bench
    from benchmarks.gpucheck.context import Context, device_name, versions
    from benchmarks.gpucheck.layouts import layout_checks
    from benchmarks.gpucheck.parity import parity_checks, precompute_check
    from benchmarks.gpucheck.zero3 import Zero3Job

    started, cpu0 = time.perf_counter(), os.times()
    scratch = None
    if cfg.workdir is None:
        scratch = tempfile.TemporaryDirectory(prefix="trl-ipo-gpu-check-")
        cfg.workdir = Path(scratch.name)
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, cfg.workdir)
    print(f"gpu_check: {device_name(cfg.device)}; GEMM {ctx.gemm['label']}: {ctx.gemm_tflops:.3g} TFLOP/s", flush=True)
    phases, checks = {}, []

    def phase(name, fn, *args):
        t0 = time.perf_counter()
        checks.extend(_guarded(name, fn, *args))
        phases[name] = round(time.perf_counter() - t0, 1)
        done = [c for c in checks if c["name"].startswith(name)]
        bad = sum(not c["passed"] for c in done)
        print(f"gpu_check: {name}: {len(done) - bad}/{len(done)} passed ({phases[name]} s)", flush=True)

    def run_checks():
        zero = Zero3Job(ctx)  # the launched ZeRO-3 job runs beside the other checks
        zero_started = _guarded("zero3", zero.start)
        try:
            if not cfg.quick:
                phase("parity", parity_checks, ctx)
            phase("layouts", layout_checks, ctx)
            phase("precompute", precompute_check, ctx)
            if zero_started == [None]:
                phase("zero3", zero.results)
            else:
                checks.extend(zero_started)
        finally:
            zero.stop()

    def benchmark():
        t0 = time.perf_counter()
        try:
            result = run_bench(ctx)
        except Exception as err:
            import traceback

            traceback.print_exc()
            result = {"bench": [], "bench_skipped": [], "targets": [], "profile": None, "bench_error": repr(err)}
        phases["bench"] = round(time.perf_counter() - t0, 1)
        return result

    # Full run: the checks first (they must all run; benchmark rows that would overrun are skipped). --quick: its
    # one benchmark row first, so that the checks' time cannot crowd it out of the 3 minutes.
    if cfg.quick:
        bench = benchmark()
        run_checks()
    else:
        run_checks()
        bench = benchmark()
    cpu1 = os.times()
    report = {
        "schema": 1,
        "device": device_name(cfg.device),
        "mode": ("tiny " if cfg.tiny else "") + ("quick" if cfg.quick else "full") + f" ({cfg.device})",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.gpucheck " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": versions(),
        "gemm_tflops": ctx.gemm_tflops,
        "gemm": ctx.gemm,
        "flex_attention": ctx.flex_error or "trains on this device",
        "checks": checks,
        **bench,
        "phases_s": phases,
        "time_left_s": ctx.remaining(),
        "wall_s": time.perf_counter() - started,
        "cpu_s": _cpu_seconds(cpu0, cpu1),
        "models": {
            "parity_and_zero3": cfg.parity_model.__dict__,
            "layouts": [m.__dict__ for m in cfg.layout_models],
            "bench": [m.__dict__ for m in cfg.bench_models],
            "check_data": cfg.check_data.__dict__,
            "bench_data": cfg.bench_data.__dict__,
            "bench_steps": {"warmup": cfg.bench_warmup, "timed": cfg.bench_steps},
        },
    }
    json_path, md_path = rep.write(report, cfg.out)
    if scratch is not None:
        scratch.cleanup()
    return _summarise(report, checks, json_path, md_path)
