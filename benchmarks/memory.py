"""Peak memory: child processes that build and run each variant alone, one after another, and record its
peak (CPU: resident set size; CUDA: ``max_memory_allocated``) and what it added."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from benchmarks.config import MEMORY_VARIANTS, BenchConfig
from benchmarks.device import Device, _init_torch
from benchmarks.timing import FreeRunning
from benchmarks.variants import ShapeRunner, make_runner


def measure_shape_memory_child(cfg, checkpoint, workdir, result_path) -> None:
    """Child process: each (shape, variant) alone, one after another; peak memory of each."""
    device = Device(cfg)
    _run_alone(ShapeRunner(cfg.shape_variants[0], cfg, checkpoint, workdir, cfg.shapes[0], 1))
    results = {}
    for shape in cfg.shapes:
        for name in cfg.shape_variants:
            runner = ShapeRunner(name, cfg, checkpoint, workdir, shape, cfg.shape_memory_steps)
            results.setdefault(shape, {})[name] = _peak_of(device, runner, cfg.shape_memory_steps)
    result_path.write_text(json.dumps(results))


def measure_memory_child(cfg: BenchConfig, checkpoint: Path, workdir: Path, result_path: Path) -> None:
    """Child process: each variant alone, one after another; peak memory per variant."""
    device = Device(cfg)
    names = [n for n in cfg.variants if n in MEMORY_VARIANTS]
    # First use of the libraries (imports, caches, thread pools) is paid once, here, not by the first variant measured.
    _run_alone(make_runner(names[0], cfg, checkpoint, workdir, cfg.seq, 1, device))
    results = {}
    for name in names:
        runner = make_runner(name, cfg, checkpoint, workdir, cfg.seq, cfg.memory_steps, device)
        results[name] = _peak_of(device, runner, cfg.memory_steps)
    result_path.write_text(json.dumps(results))


def _run_alone(runner) -> None:
    runner.setup()
    runner.run(FreeRunning())
    runner.close()


def _peak_of(device: Device, runner, steps: int) -> dict:
    """Set up and run ``runner`` (built, not yet set up) from a released device; its peak and what it added."""
    device.release()
    before = device.memory_now()
    reset = device.reset_peak()
    runner.setup()
    runner.run(FreeRunning())
    device.synchronize()
    peak = device.memory_peak()
    runner.close()
    return {
        "metric": device.memory_metric(),
        "peak_bytes": peak,
        "before_bytes": before,
        "added_bytes": peak - before,
        "peak_reset": reset,
        "steps": steps,
    }


def start_memory_child(cfg: BenchConfig, workdir: Path) -> tuple[subprocess.Popen, Path]:
    """Started early so its imports overlap the parent's; it waits on stdin until the checkpoint exists."""
    config_path, result_path = workdir / "memory-config.json", workdir / "memory-result.json"
    config_path.write_text(json.dumps(asdict(cfg)))
    env = _child_env(dict(os.environ))
    # Large buffers are mmap-ed and unmapped when freed, so one variant's freed memory does not hide the next's peak.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    child = subprocess.Popen(_child_command("--memory-child", workdir), stdin=subprocess.PIPE, env=env, text=True)
    return child, result_path


def memory_child_main(workdir: Path, shapes: bool = False) -> int:
    cfg = BenchConfig(**json.loads((workdir / "memory-config.json").read_text()))
    _init_torch(cfg)
    gc.collect()
    gc.freeze()  # the libraries' own objects stay put; the collections between variants only scan ours
    if shapes:
        measure_shape_memory_child(cfg, workdir / "checkpoint", workdir, workdir / "shape-memory-result.json")
        return 0
    sys.stdin.readline()  # the parent writes a line once the checkpoint is saved
    measure_memory_child(cfg, workdir / "checkpoint", workdir, workdir / "memory-result.json")
    return 0


def run_shape_memory_child(cfg: BenchConfig, workdir: Path) -> dict:
    """Peak memory of every (shape, variant), measured in a child process while the parent waits."""
    (workdir / "memory-config.json").write_text(json.dumps(asdict(cfg)))
    env = _child_env(dict(os.environ))
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    code = subprocess.call(_child_command("--shape-memory-child", workdir), env=env)
    if code != 0:
        raise RuntimeError(f"shape memory child process failed with exit code {code}")
    return json.loads((workdir / "shape-memory-result.json").read_text())


def _child_command(flag: str, workdir: Path) -> list[str]:
    """``python -m benchmarks FLAG WORKDIR``: the child runs this package's command line, not a file by path."""
    return [sys.executable, "-m", "benchmarks", flag, str(workdir)]


def _child_env(env: dict) -> dict:
    """The child's environment: the repository root first on ``PYTHONPATH``, so ``-m benchmarks`` finds this package
    from any working directory."""
    root = str(Path(__file__).resolve().parents[1])
    paths = [x for x in env.get("PYTHONPATH", "").split(os.pathsep) if x]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env
