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
        report = json.loads(Path(args.render).read_text())
        tables = (render_markdown(report) if report["variants"] else "", render_shapes(report))
        print("\n\n".join(t for t in tables if t))
        return 0

    started = time.perf_counter()
    workdir_obj = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir_obj = tempfile.TemporaryDirectory(prefix="trl-ipo-bench-")
        workdir = Path(workdir_obj.name)
    child = result_path = None
    if cfg.memory and not cfg.only_shapes and any(n in MEMORY_VARIANTS for n in cfg.variants):
        child, result_path = start_memory_child(cfg, workdir)
    try:
        _init_torch(cfg)
        device = Device(cfg)
        checkpoint = workdir / "checkpoint"
        counts = build_checkpoint(cfg, checkpoint)
        load_start = os.getloadavg()
        phases = {"start_up_s": time.perf_counter() - started}

        memory, load_before = None, None
        if child is not None:
            child.stdin.write("go\n")
            child.stdin.flush()

        def finish_memory():  # runs after the untimed set-ups: nothing timed competes with the child for the cores
            nonlocal child, memory, load_before
            if child is not None:
                if child.wait() != 0:
                    raise RuntimeError(f"memory child process failed with exit code {child.returncode}")
                memory = json.loads(result_path.read_text())
                child = None
            phases["set_up_and_memory_s"] = time.perf_counter() - started - phases["start_up_s"]
            phases["timed_from"] = time.perf_counter()
            load_before = os.getloadavg()

        shape_memory = None
        if cfg.shapes and cfg.memory:  # one shape-memory child, alone on the cores, before any timing
            shape_memory = run_shape_memory_child(cfg, workdir)
        variants = {}
        if not cfg.only_shapes:
            variants = time_variants(
                cfg,
                cfg.variants,
                checkpoint,
                workdir,
                cfg.seq,
                cfg.warmup,
                cfg.steps,
                device,
                counts,
                before_timed=finish_memory,
            )
        else:
            finish_memory()
        phases["timing_s"] = time.perf_counter() - phases.pop("timed_from")
        shapes_start, shapes = time.perf_counter(), {}
        for shape in cfg.shapes:
            shapes[shape] = time_shape(cfg, shape, checkpoint, workdir, device, counts)
        phases["shapes_s"] = time.perf_counter() - shapes_start
        scan_start = time.perf_counter()

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
        load_after = os.getloadavg()
        phases["scan_s"] = time.perf_counter() - scan_start
        profile = None
        if args.profile and not cfg.only_shapes:
            profile = profile_variants(cfg, cfg.variants, checkpoint, workdir, device)

        ratio = ratios(variants)
        report = {
            "schema": 1,
            "command": "python scripts/bench.py " + shlex.join(argv),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(device, cfg),
            "load_average": {"start": load_start, "before_timing": load_before, "after": load_after},
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
            "memory": memory,
            "targets": target_checks(ratio, memory),
            "scan": scan,
            "shapes": shapes,
            "shape_memory": shape_memory,
            "shape_checks": shape_checks(shapes, shape_memory),
            "profile": profile,
            "phases": phases,
            "wall_s": time.perf_counter() - started,
        }
    finally:
        if child is not None:
            child.kill()
            child.wait()
        if workdir_obj is not None:
            workdir_obj.cleanup()

    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print_table(report)
    print(text)
    return 0
