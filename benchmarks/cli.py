"""The command line of ``python scripts/bench.py`` (and ``python -m benchmarks``): argument parsing and
:func:`main`, which runs the measurements and writes the JSON."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import benchmarks
from benchmarks.config import (
    INT_OPTIONS,
    MEMORY_VARIANTS,
    PRESETS,
    SHAPE_INT_OPTIONS,
    SHAPE_VARIANTS,
    SHAPES,
    VARIANTS,
    BenchConfig,
    validate_config,
)
from benchmarks.device import Device, _init_torch
from benchmarks.memory import memory_child_main, run_shape_memory_child, start_memory_child
from benchmarks.report import (
    machine_info,
    print_table,
    ratios,
    render_markdown,
    render_shapes,
    shape_checks,
    target_checks,
)
from benchmarks.timing import profile_variants, time_shape, time_variants
from benchmarks.workloads import build_checkpoint, flops_per_token


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=benchmarks.__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="cuda: bf16, 0.66B Qwen2, sequence 1024")
    p.add_argument("--tiny", action="store_true", help="a model and run small enough for a test (seconds)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    for name in INT_OPTIONS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    p.add_argument("--scan-seqs", type=_int_list, default=None, help="comma-separated sequence lengths")
    p.add_argument("--scan-variants", type=_name_list, default=None, help="comma-separated, e.g. A,F")
    p.add_argument("--variants", type=_name_list, default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument(
        "--shapes",
        type=_name_list,
        default=None,
        help=f"comma-separated workload shapes for the layout variants, of {','.join(SHAPES)}",
    )
    p.add_argument(
        "--shape-variants", type=_name_list, default=None, help=f"comma-separated subset of {','.join(SHAPE_VARIANTS)}"
    )
    for name in SHAPE_INT_OPTIONS:
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    p.add_argument("--only-shapes", action="store_true", help="measure only the workload shapes")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device, for MFU")
    p.add_argument("--no-memory", action="store_true", help="skip the memory child process")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile one step of each variant (torch.profiler, top ops by self time) into the JSON",
    )
    p.add_argument("--out", default=None, help="write the JSON here (it is always printed)")
    p.add_argument("--workdir", default=None, help="where the model checkpoint is built (default: a temp dir)")
    p.add_argument("--render", default=None, metavar="JSON", help="print the markdown tables of a result and exit")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--shape-memory-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    values = {}
    if args.device == "cuda":
        values.update(PRESETS["cuda"])
    if args.tiny:
        values.update(PRESETS["tiny"])
        if args.device == "cuda":
            values.update(device="cuda", dtype="bfloat16")
    for key in (f.name for f in fields(BenchConfig)):  # every option given on the command line wins
        value = getattr(args, key, None)
        if value is not None and not isinstance(value, bool):  # the store_true flags are handled below
            values[key] = value
    if args.no_memory:
        values["memory"] = False
    if args.only_shapes:
        values["only_shapes"] = True
    cfg = replace(BenchConfig(), **values)
    validate_config(cfg)
    return cfg, args


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg, args = parse_args(argv)
    if args.memory_child:
        return memory_child_main(Path(args.memory_child))
    if args.shape_memory_child:
        return memory_child_main(Path(args.shape_memory_child), shapes=True)
    if args.render:
        return _render(Path(args.render))
    report = _measure(cfg, args, argv)
    _write_report(report, args.out)
    return 0


def _render(path: Path) -> int:
    """Print the markdown tables of a result JSON."""
    report = json.loads(path.read_text())
    tables = (render_markdown(report) if report["variants"] else "", render_shapes(report))
    print("\n\n".join(t for t in tables if t))
    return 0


def _write_report(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=2)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print_table(report)
    print(text)


class _MemoryChild:
    """The memory child process, when the run measures memory: started first, told to go once the checkpoint is
    built, and waited for just before the timing starts, so that nothing timed competes with it for the cores."""

    def __init__(self, cfg: BenchConfig, workdir: Path):
        self.process = self.result_path = self.memory = None
        if cfg.memory and not cfg.only_shapes and any(n in MEMORY_VARIANTS for n in cfg.variants):
            self.process, self.result_path = start_memory_child(cfg, workdir)

    def go(self) -> None:
        if self.process is not None:
            self.process.stdin.write("go\n")
            self.process.stdin.flush()

    def wait(self) -> None:
        """Wait for the child and read its result (once)."""
        if self.process is not None:
            if self.process.wait() != 0:
                raise RuntimeError(f"memory child process failed with exit code {self.process.returncode}")
            self.memory = json.loads(self.result_path.read_text())
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()


def _measure(cfg: BenchConfig, args: argparse.Namespace, argv: list[str]) -> dict:
    """Every measurement of the run, in a work folder (``--workdir`` or a temporary one), as the report mapping."""
    started = time.perf_counter()
    workdir_obj = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir_obj = tempfile.TemporaryDirectory(prefix="trl-ipo-bench-")
        workdir = Path(workdir_obj.name)
    child = _MemoryChild(cfg, workdir)
    try:
        return _run_measurements(cfg, args, argv, workdir, child, started)
    finally:
        child.kill()
        if workdir_obj is not None:
            workdir_obj.cleanup()


def _run_measurements(
    cfg: BenchConfig, args: argparse.Namespace, argv: list[str], workdir: Path, child: _MemoryChild, started: float
) -> dict:
    _init_torch(cfg)
    device = Device(cfg)
    checkpoint = workdir / "checkpoint"
    counts = build_checkpoint(cfg, checkpoint)
    load_average = {"start": os.getloadavg(), "before_timing": None, "after": None}
    phases = {"start_up_s": time.perf_counter() - started}
    child.go()

    def finish_memory():  # runs after the untimed set-ups: nothing timed competes with the child for the cores
        child.wait()
        phases["set_up_and_memory_s"] = time.perf_counter() - started - phases["start_up_s"]
        phases["timed_from"] = time.perf_counter()
        load_average["before_timing"] = os.getloadavg()

    shape_memory = None
    if cfg.shapes and cfg.memory:  # one shape-memory child, alone on the cores, before any timing
        shape_memory = run_shape_memory_child(cfg, workdir)
    variants = _time_main_variants(cfg, checkpoint, workdir, device, counts, finish_memory)
    phases["timing_s"] = time.perf_counter() - phases.pop("timed_from")
    shapes_start, shapes = time.perf_counter(), {}
    for shape in cfg.shapes:
        shapes[shape] = time_shape(cfg, shape, checkpoint, workdir, device, counts)
    phases["shapes_s"] = time.perf_counter() - shapes_start
    scan_start = time.perf_counter()
    scan = _scan(cfg, variants, checkpoint, workdir, device, counts)
    load_average["after"] = os.getloadavg()
    phases["scan_s"] = time.perf_counter() - scan_start
    profile = None
    if args.profile and not cfg.only_shapes:
        profile = profile_variants(cfg, cfg.variants, checkpoint, workdir, device)

    ratio = ratios(variants)
    return {
        "schema": 1,
        "command": "python scripts/bench.py " + shlex.join(argv),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(device, cfg),
        "load_average": load_average,
        "config": asdict(cfg),
        "model": {
            **counts,
            "architecture": "Qwen2 (random init)",
            "dtype": cfg.dtype,
            "flops_per_token": flops_per_token(cfg, cfg.seq, counts["non_embedding_parameters"]),
        },
        "variants": variants,
        "ratios": ratio,
        "cpu_time_ratios": ratios(variants, "cpu_time_s"),
        "memory": child.memory,
        "targets": target_checks(ratio, child.memory),
        "scan": scan,
        "shapes": shapes,
        "shape_memory": shape_memory,
        "shape_checks": shape_checks(shapes, shape_memory),
        "profile": profile,
        "phases": phases,
        "wall_s": time.perf_counter() - started,
    }


def _time_main_variants(cfg: BenchConfig, checkpoint: Path, workdir: Path, device, counts: dict, before_timed) -> dict:
    """The timed variants at the main sequence length (none with --only-shapes); ``before_timed`` runs first."""
    if cfg.only_shapes:
        before_timed()
        return {}
    return time_variants(
        cfg,
        cfg.variants,
        checkpoint,
        workdir,
        cfg.seq,
        cfg.warmup,
        cfg.steps,
        device,
        counts,
        before_timed=before_timed,
    )


def _scan(cfg: BenchConfig, variants: dict, checkpoint: Path, workdir: Path, device, counts: dict) -> list[dict]:
    """The sequence-length scan; a variant already timed at the main length is reused, not timed again."""
    scan = []
    for seq in [] if cfg.only_shapes else cfg.scan_seqs:
        names = list(cfg.scan_variants)
        reuse = {n: variants[n] for n in names if seq == cfg.seq and n in variants}
        todo = [n for n in names if n not in reuse]
        row = dict(reuse)
        if todo:
            row.update(
                time_variants(cfg, todo, checkpoint, workdir, seq, cfg.scan_warmup, cfg.scan_steps, device, counts)
            )
        scan.append({"seq": seq, "variants": {n: row[n] for n in names}, "reused_from_main": sorted(reuse)})
    return scan
