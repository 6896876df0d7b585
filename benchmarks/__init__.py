"""Step time and memory of IPOTrainer against TRL's own IPO, the bare model compute and precomputed references.

Every variant trains the same saved random Qwen2 on the same batches (pairs of equal length, so no padding), with
the same seed and settings:

    A        IPOTrainer, hard labels
    A_prime  IPOTrainer with a preference column (soft labels q), symmetric target, ipo/* metrics logged every step
    B        trl.DPOTrainer(loss_type=["ipo"]), TRL's own IPO
    F        the floor: policy forward + backward of the concatenated [chosen; rejected] batch, reference forward and
             the optimizer step, in plain PyTorch (no trainer, no metrics, no gradient clipping)
    F_metrics  F whose fused LM head also computes what DPOTrainer asks of it for logging (entropy, mean logit,
             top-1): A/F_metrics is the trainer's own overhead, F_metrics/F the price of those metrics
    P        IPOTrainer with precompute_ref_log_probs=True: training steps only, the precompute is timed apart

Timing. One process. Each variant runs in its own thread and a coordinator passes a single turn around, so exactly
one variant computes at any moment; a round gives every variant one optimizer step, and the order is reversed every
other round (A A' B F F_metrics P, then P F_metrics F B A' A, ...) so that drift cancels. A trainer's step is timed
from ``on_step_begin`` to ``on_step_end`` (forward, backward, clipping, optimizer and scheduler step); the
"iteration" time also holds the logging and the fetch of the next batch. Warm-up steps are dropped; the median is
reported, with the process's CPU seconds (user + system) per step beside the wall time.

Memory. A child process runs the variants one after another and records, for each, the peak resident set size
(CPU: ``VmHWM`` reset through ``/proc/self/clear_refs`` before the variant is built) or ``torch.cuda.
max_memory_allocated`` (CUDA), and the increase over the level just before the variant was built.

Model FLOPs (PaLM's convention, causal attention counted in full): a forward costs ``2·N + 4·L·d·S`` per token,
N being the parameters outside the input embedding (LM head included), L layers, d the hidden size, S the sequence
length; a training forward+backward costs three forwards. IPO steps of A, A', B and F do one policy training pass
and one reference forward per token; P only the training pass. MFU = achieved FLOP/s over ``--peak-tflops``.

Usage::

    python scripts/bench.py --out benchmarks/cpu-qwen2-h512-l4-v32k.json  # the recorded CPU benchmark
    python scripts/bench.py --tiny --out /tmp/b.json                      # seconds; what the test runs
    python scripts/bench.py --device cuda --out benchmarks/cuda-h200.json # bf16, 0.66B Qwen2, sequence 1024

Layouts (prefix sharing S, padding-free Pf, both SP) against B and A on workloads of varied lengths::

    python scripts/bench.py --only-shapes --shapes equal,prompt-heavy,balanced,completion-heavy \
        --shape-steps 2 --out benchmarks/cpu-packed-shapes.json                       # CPU, about an hour loaded
    python scripts/bench.py --device cuda --only-shapes \
        --shapes equal,prompt-heavy,balanced,completion-heavy --out benchmarks/cuda-packed-shapes.json

Layout (the package is the benchmark; ``scripts/bench.py`` and ``python -m benchmarks`` only call
:func:`benchmarks.cli.main`)::

    config.py     variants, targets, workload shapes, BenchConfig, presets, validation
    workloads.py  model (parameters, FLOPs, checkpoint) and synthetic data (equal lengths, workload shapes)
    device.py     torch set-up and the device-specific operations (synchronise, memory probes, peak FLOP/s)
    variants.py   the runners: trainers A, A', B, P, the floors F and F_metrics, the layouts on workload shapes
    timing.py     the interleaved rotation, timed steps (wall and CPU time), throughput, profiler
    memory.py     the memory child processes and their per-variant peaks
    report.py     ratios, target checks, machine information, printed table and Markdown rendering
    cli.py        argument parsing and main
"""

import os

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(_key, _value)

from benchmarks.cli import main, parse_args  # after the environment defaults above
from benchmarks.config import (
    BYTE_VOCAB,
    CHARSET,
    MEMORY_VARIANTS,
    PRESETS,
    SHAPE_SIGMA,
    SHAPE_VARIANTS,
    SHAPES,
    TARGETS,
    VARIANTS,
    BenchConfig,
    validate_config,
)
from benchmarks.report import render_markdown, render_shapes, shape_checks
from benchmarks.timing import run_interleaved
from benchmarks.workloads import (
    build_checkpoint,
    make_rows,
    make_shape_rows,
    parameter_count,
    shape_lengths,
    shape_work,
)

__all__ = [
    "BYTE_VOCAB",
    "CHARSET",
    "MEMORY_VARIANTS",
    "PRESETS",
    "SHAPES",
    "SHAPE_SIGMA",
    "SHAPE_VARIANTS",
    "TARGETS",
    "VARIANTS",
    "BenchConfig",
    "build_checkpoint",
    "main",
    "make_rows",
    "make_shape_rows",
    "parameter_count",
    "parse_args",
    "render_markdown",
    "render_shapes",
    "run_interleaved",
    "shape_checks",
    "shape_lengths",
    "shape_work",
    "validate_config",
]
