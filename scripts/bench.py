#!/usr/bin/env python
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
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}.items():
    os.environ.setdefault(_key, _value)

VARIANTS = {
    "A": "IPOTrainer, hard labels",
    "A_prime": "IPOTrainer, preference column, symmetric, ipo/* metrics",
    "B": 'trl.DPOTrainer(loss_type=["ipo"])',
    "F": "floor: policy fwd+bwd, reference fwd, optimizer step (no trainer)",
    "F_metrics": "floor + the LM-head outputs TRL logs (entropy, mean logit, top-1)",
    "P": "IPOTrainer, precompute_ref_log_probs=True (training steps only)",
}
TARGETS = {"A/B": 1.02, "A_prime/A": 1.02, "A/F": 1.10, "P/A": 0.80}
# Layout variants, timed side by side on each workload shape against B and A.
SHAPE_VARIANTS = {
    "B": 'trl.DPOTrainer(loss_type=["ipo"])',
    "A": "IPOTrainer, padded layout",
    "S": "IPOTrainer, prefix_sharing=True",
    "Pf": "IPOTrainer, padding_free=True",
    "SP": "IPOTrainer, prefix_sharing=True and padding_free=True",
}
SHAPE_FLAGS = {"S": dict(prefix_sharing=True), "Pf": dict(padding_free=True),
               "SP": dict(prefix_sharing=True, padding_free=True)}
# Workload shapes: mean prompt : completion, lengths log-normal with spread SHAPE_SIGMA; "equal" is the padding-free
# equal-length workload of the main table (TRL's best case).
SHAPES = {"equal": None, "prompt-heavy": (3, 1), "balanced": (1, 1), "completion-heavy": (1, 3)}
SHAPE_SIGMA = 0.5
# samples/s over B's that the layouts should reach on CPU (best of S, Pf, SP), and memory at most B's.
SHAPE_TARGETS = {"prompt-heavy": 1.5, "balanced": 1.2, "completion-heavy": 1.0}
# Measured in the memory child (F_metrics allocates like F).
MEMORY_VARIANTS = ("A", "A_prime", "B", "F", "P")
# What DPOTrainer's fused LM head computes besides the log-probs, for its logged metrics.
TRL_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
# Dense bf16 peak of the accelerator, TFLOP/s (vendor data sheets, SXM parts).
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
# One token per printable ASCII character: the benchmark tokenizer has no merges (256 bytes + 4 special tokens).
CHARSET = "".join(chr(c) for c in range(33, 127))
BYTE_VOCAB = 260


@dataclass
class BenchConfig:
    """What a run measures. ``--tiny`` and ``--device cuda`` change the defaults; flags override them."""

    device: str = "cpu"
    dtype: str = "float32"
    hidden: int = 512
    layers: int = 4
    heads: int = 8
    intermediate: int = 1024
    vocab: int = 32000
    seq: int = 256
    pairs: int = 4
    warmup: int = 1
    steps: int = 5
    scan_seqs: list[int] = field(default_factory=lambda: [256, 512, 1024])
    scan_variants: list[str] = field(default_factory=lambda: ["A"])
    scan_warmup: int = 1
    scan_steps: int = 2
    memory_steps: int = 2
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    threads: int = 2
    seed: int = 0
    beta: float = 0.1
    learning_rate: float = 1e-6
    peak_tflops: float | None = None
    memory: bool = True
    tiny: bool = False
    # Packed and prefix-shared layouts on workloads of varied lengths (see SHAPES); empty: not measured.
    shapes: list[str] = field(default_factory=list)
    shape_variants: list[str] = field(default_factory=lambda: list(SHAPE_VARIANTS))
    shape_pairs: int = 8
    shape_mean: int = 128  # mean prompt + completion tokens of a sequence
    shape_max: int = 512  # max_length: no sequence is longer, so truncation never changes the work
    shape_warmup: int = 1
    shape_steps: int = 3
    shape_memory_steps: int = 1
    only_shapes: bool = False


PRESETS = {
    "tiny": dict(
        hidden=32, layers=2, heads=4, intermediate=64, vocab=512, seq=32, pairs=2, warmup=1, steps=2,
        scan_seqs=[32, 64], scan_warmup=1, scan_steps=1, memory_steps=2, tiny=True,
        shape_pairs=3, shape_mean=24, shape_max=64, shape_warmup=0, shape_steps=2,
    ),
    # Qwen2-0.5B widths (hidden 896, 24 layers, 14 heads, MLP 4864, vocab 151936), untied head, full KV heads.
    "cuda": dict(
        device="cuda", dtype="bfloat16", hidden=896, layers=24, heads=14, intermediate=4864, vocab=151936,
        seq=1024, pairs=4, warmup=3, steps=10, scan_seqs=[256, 512, 1024], scan_variants=["A", "F"],
        scan_warmup=2, scan_steps=5, memory_steps=3,
        shape_pairs=8, shape_mean=768, shape_max=2048, shape_warmup=1, shape_steps=3, shape_memory_steps=1,
    ),
}


# ------------------------------------------------------------------------------------------------ configuration
def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="cuda: bf16, 0.66B Qwen2, sequence 1024")
    p.add_argument("--tiny", action="store_true", help="a model and run small enough for a test (seconds)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    for name in ("hidden", "layers", "heads", "intermediate", "vocab", "seq", "pairs", "warmup", "steps",
                 "scan-warmup", "scan-steps", "memory-steps", "threads", "seed"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--scan-seqs", type=_int_list, default=None, help="comma-separated sequence lengths")
    p.add_argument("--scan-variants", type=_name_list, default=None, help="comma-separated, e.g. A,F")
    p.add_argument("--variants", type=_name_list, default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    p.add_argument("--shapes", type=_name_list, default=None,
                   help=f"comma-separated workload shapes for the layout variants, of {','.join(SHAPES)}")
    p.add_argument("--shape-variants", type=_name_list, default=None,
                   help=f"comma-separated subset of {','.join(SHAPE_VARIANTS)}")
    for name in ("shape-pairs", "shape-mean", "shape-max", "shape-warmup", "shape-steps", "shape-memory-steps"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--only-shapes", action="store_true", help="measure only the workload shapes")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s of the device, for MFU")
    p.add_argument("--no-memory", action="store_true", help="skip the memory child process")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step of each variant (torch.profiler, top ops by self time) into the JSON")
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
    for key in ("device", "dtype", "hidden", "layers", "heads", "intermediate", "vocab", "seq", "pairs", "warmup",
                "steps", "scan_warmup", "scan_steps", "memory_steps", "threads", "seed", "scan_seqs",
                "scan_variants", "variants", "peak_tflops", "shapes", "shape_variants", "shape_pairs", "shape_mean",
                "shape_max", "shape_warmup", "shape_steps", "shape_memory_steps"):
        value = getattr(args, key)
        if value is not None:
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


def validate_config(cfg: BenchConfig) -> None:
    """Reject a configuration that cannot be measured, naming the offending option, before anything is built."""
    for name in ("hidden", "layers", "heads", "intermediate", "vocab", "seq", "pairs", "steps", "threads",
                 "scan_steps", "memory_steps"):
        if getattr(cfg, name) < 1:
            raise SystemExit(f"bench: --{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}.")
    if cfg.warmup < 0 or cfg.scan_warmup < 0:
        raise SystemExit("bench: --warmup and --scan-warmup must be >= 0.")
    if cfg.hidden % cfg.heads:
        raise SystemExit(f"bench: --hidden {cfg.hidden} is not divisible by --heads {cfg.heads}.")
    if cfg.vocab < BYTE_VOCAB:
        raise SystemExit(f"bench: --vocab must be at least {BYTE_VOCAB} (the byte tokenizer's size), got {cfg.vocab}.")
    for name in ("variants", "scan_variants"):
        unknown = [v for v in getattr(cfg, name) if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"bench: --{name.replace('_', '-')} has unknown {unknown}; choose from {list(VARIANTS)}.")
    unknown = [v for v in cfg.shapes if v not in SHAPES]
    if unknown:
        raise SystemExit(f"bench: --shapes has unknown {unknown}; choose from {list(SHAPES)}.")
    unknown = [v for v in cfg.shape_variants if v not in SHAPE_VARIANTS]
    if unknown:
        raise SystemExit(f"bench: --shape-variants has unknown {unknown}; choose from {list(SHAPE_VARIANTS)}.")
    if cfg.only_shapes and not cfg.shapes:
        raise SystemExit("bench: --only-shapes needs --shapes.")
    if cfg.shapes and not 8 <= cfg.shape_mean < cfg.shape_max <= 2048:
        raise SystemExit(f"bench: need 8 <= --shape-mean < --shape-max <= 2048, got {cfg.shape_mean}, {cfg.shape_max}.")
    for seq in [cfg.seq, *cfg.scan_seqs]:
        if not 4 <= seq <= 2048:
            raise SystemExit(f"bench: sequence length {seq} is outside [4, 2048] (the model's positions).")
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench: --device cuda needs a CUDA device, but torch.cuda.is_available() is False.")


# ------------------------------------------------------------------------------------------------ model and data
def parameter_count(cfg: BenchConfig) -> dict[str, int]:
    """Parameters of the Qwen2 built by :func:`trl_ipo.lab.tiny.build_model` (untied head, KV heads = heads)."""
    d, inter, vocab = cfg.hidden, cfg.intermediate, cfg.vocab
    per_layer = 4 * d * d + 3 * d + 3 * d * inter + 2 * d  # q,k,v,o (+ q,k,v biases), gate/up/down, two norms
    embedding = vocab * d
    non_embedding = cfg.layers * per_layer + d + vocab * d  # + final norm + LM head
    return {"parameters": embedding + non_embedding, "non_embedding_parameters": non_embedding}


def flops_per_token(cfg: BenchConfig, seq: int, non_embedding: int) -> dict[str, float]:
    """Model FLOPs per token: a forward, and a training forward+backward (3 forwards), PaLM's convention."""
    forward = 2.0 * non_embedding + 4.0 * cfg.layers * cfg.hidden * seq
    return {"forward": forward, "train": 3.0 * forward}


def step_flops(cfg: BenchConfig, variant: str, seq: int, non_embedding: int) -> float:
    """Model FLOPs of one optimizer step: a policy training pass, plus a reference forward except for P."""
    per_token = flops_per_token(cfg, seq, non_embedding)
    passes = per_token["train"] + (0.0 if variant == "P" else per_token["forward"])
    return passes * tokens_per_step(cfg, seq)


def tokens_per_step(cfg: BenchConfig, seq: int) -> int:
    return 2 * cfg.pairs * seq  # [chosen; rejected], every position a real token


def build_checkpoint(cfg: BenchConfig, directory: Path) -> dict[str, int]:
    """Save the byte tokenizer and the random Qwen2 in ``directory`` (fp32 on disk; loaded in ``cfg.dtype``)."""
    import torch

    from trl_ipo.lab.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer([CHARSET], vocab_size=BYTE_VOCAB)
    model = build_model(
        tokenizer, hidden_size=cfg.hidden, num_layers=cfg.layers, num_heads=cfg.heads,
        intermediate_size=cfg.intermediate, seed=cfg.seed, vocab_size=cfg.vocab,
        dtype=cfg.dtype,
    )
    model.to(getattr(torch, cfg.dtype)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    return {"parameters": total, "non_embedding_parameters": total - embedding}


def make_rows(cfg: BenchConfig, seq: int, n_pairs: int, preference: bool) -> list[dict]:
    """Random printable-ASCII pairs that tokenize to exactly ``seq`` tokens each (prompt + completion + EOS)."""
    rng = random.Random(cfg.seed * 1_000_003 + seq)
    prompt_len = seq // 2
    completion_len = seq - prompt_len - 1  # TRL appends EOS
    rows = []
    for _ in range(n_pairs):
        row = {
            "prompt": "".join(rng.choices(CHARSET, k=prompt_len)),
            "chosen": "".join(rng.choices(CHARSET, k=completion_len)),
            "rejected": "".join(rng.choices(CHARSET, k=completion_len)),
        }
        if preference:
            row["q"] = round(rng.random(), 4)
        rows.append(row)
    return rows


def shape_lengths(cfg: BenchConfig, shape: str) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts of ``shape_pairs · (shape_warmup + shape_steps)`` pairs.

    Log-normal prompt and completion lengths (spread ``SHAPE_SIGMA``) whose means split ``shape_mean`` by the shape's
    ratio; chosen and rejected are drawn independently. A sequence (prompt + completion + EOS) stays within
    ``shape_max``. ``equal``: every prompt ``shape_mean / 2``, every completion ``shape_mean / 2 - 1`` plus EOS.
    """
    import math

    n = cfg.shape_pairs * max(cfg.shape_warmup + cfg.shape_steps, cfg.shape_memory_steps)
    ratio = SHAPES[shape]
    if ratio is None:
        half = cfg.shape_mean // 2
        return [(half, half - 1, half - 1)] * n
    rng = random.Random(cfg.seed * 1_000_003 + sum(map(ord, shape)))
    prompt_mean = cfg.shape_mean * ratio[0] / sum(ratio)
    completion_mean = cfg.shape_mean - prompt_mean

    def draw(mean):  # log-normal with the given mean: mu = ln(mean) - sigma² / 2
        return max(1, round(rng.lognormvariate(math.log(mean) - SHAPE_SIGMA**2 / 2, SHAPE_SIGMA)))

    out = []
    for _ in range(n):
        prompt = min(draw(prompt_mean), cfg.shape_max - 2)
        chosen, rejected = (min(draw(completion_mean), cfg.shape_max - prompt - 1) for _ in range(2))
        out.append((prompt, chosen, rejected))
    return out


def make_shape_rows(cfg: BenchConfig, shape: str) -> list[dict]:
    rng = random.Random(cfg.seed + 17)
    text = lambda k: "".join(rng.choices(CHARSET, k=k))  # noqa: E731  (one token per character)
    # TRL appends EOS to each completion: c - 1 characters make c tokens.
    return [{"prompt": text(p), "chosen": text(c - 1), "rejected": text(r - 1)}
            for p, c, r in shape_lengths(cfg, shape)]


def shape_work(cfg: BenchConfig, shape: str, counts: dict) -> dict:
    """Per step, averaged over the timed steps: pairs, real tokens of the padded layout (what every variant
    computes the loss on), tokens each layout puts through the model, and the useful model FLOPs."""
    lengths = shape_lengths(cfg, shape)
    n = cfg.shape_pairs
    steps = [lengths[i : i + n] for i in range(0, n * (cfg.shape_warmup + cfg.shape_steps), n)][cfg.shape_warmup :]
    real, padded, shared, flops = [], [], [], []
    for batch in steps:
        rows = [p + c for p, c, _ in batch] + [p + r for p, _, r in batch]
        real.append(sum(rows))
        padded.append(len(rows) * max(rows))
        shared.append(sum(rows) - sum(p for p, _, _ in batch))
        per_row = [(2.0 * counts["non_embedding_parameters"] + 4.0 * cfg.layers * cfg.hidden * r) * r for r in rows]
        flops.append(4.0 * sum(per_row))  # policy training pass (3 forwards) + reference forward
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"pairs": n, "real_tokens": mean(real), "padded_tokens": mean(padded),
            "shared_tokens": mean(shared), "useful_flops": mean(flops)}


# ------------------------------------------------------------------------------------------------ device
class Device:
    """The few device-specific operations: synchronise, memory probes, name and peak FLOP/s."""

    def __init__(self, cfg: BenchConfig):
        import torch

        self.torch = torch
        self.kind = cfg.device
        self.cuda = cfg.device == "cuda"
        self.name = torch.cuda.get_device_name(0) if self.cuda else _cpu_name()
        self.peak_tflops = cfg.peak_tflops
        if self.peak_tflops is None and self.cuda and cfg.dtype == "bfloat16":
            self.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in self.name), None)

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def memory_metric(self) -> str:
        return "cuda_max_allocated" if self.cuda else "peak_rss"

    def memory_now(self) -> int:
        if self.cuda:
            return self.torch.cuda.memory_allocated()
        return _proc_status_kb("VmRSS") * 1024

    def reset_peak(self) -> bool:
        """Start a new peak window; False where the platform cannot reset the RSS high-water mark."""
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            return True
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def memory_peak(self) -> int:
        if self.cuda:
            return self.torch.cuda.max_memory_allocated()
        return _proc_status_kb("VmHWM") * 1024

    def release(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()
        else:
            try:  # hand freed heap pages back, so the next variant starts from a clean level
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:
                pass


def _proc_status_kb(key: str) -> int:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------ turns
class Turn:
    """One variant's seat in the rotation and its timings.

    The variant's thread calls :meth:`step_begin` / :meth:`step_end` around each optimizer step. ``step_begin`` hands
    the turn back to the coordinator and blocks until it is granted again, so nothing of the variant (logging,
    data loading) runs while another variant is being timed.
    """

    def __init__(self, name: str, device: Device | None):
        self.name = name
        self.device = device
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self.finished = False
        self.error: BaseException | None = None
        self.step_times: list[float] = []
        self.iteration_times: list[float] = []
        self.cpu_times: list[float] = []  # user + system CPU seconds of the process during the step
        self.sys_times: list[float] = []
        self._t0: float | None = None

    # --- called from the variant's thread
    def step_begin(self) -> None:
        self._sync()
        if self._t0 is not None:
            self.iteration_times.append(time.perf_counter() - self._t0)
        self._done.release()
        self._go.acquire()
        self._sync()
        self._cpu0 = os.times()
        self._t0 = time.perf_counter()

    def step_end(self) -> None:
        self._sync()
        self.step_times.append(time.perf_counter() - self._t0)
        cpu = os.times()  # process-wide, but only this variant runs while it holds the turn
        self.cpu_times.append(cpu.user + cpu.system - self._cpu0.user - self._cpu0.system)
        self.sys_times.append(cpu.system - self._cpu0.system)

    def _sync(self) -> None:
        if self.device is not None:
            self.device.synchronize()

    def run_thread(self, work) -> threading.Thread:
        def body():
            self._go.acquire()
            try:
                work(self)
            except BaseException as exc:  # reported by the coordinator
                self.error = exc
            finally:
                self.finished = True
                self._done.release()

        thread = threading.Thread(target=body, name=f"bench-{self.name}", daemon=True)
        thread.start()
        return thread

    # --- called from the coordinator
    def grant(self) -> None:
        self._go.release()
        self._done.acquire()
        if self.error is not None:
            raise RuntimeError(f"variant {self.name} failed: {self.error!r}") from self.error


class FreeRunning:
    """A stand-in for :class:`Turn` outside the rotation (memory child): no waiting, no timing."""

    def step_begin(self) -> None:
        pass

    def step_end(self) -> None:
        pass


class ProfilingTurn:
    """Runs outside the rotation and records a torch.profiler trace of step number ``profile_step`` (0-based)."""

    def __init__(self, device: Device, profile_step: int, top: int = 15):
        self.device, self.profile_step, self.top = device, profile_step, top
        self.count, self.profiler, self.step_s, self.table = 0, None, None, None

    def step_begin(self) -> None:
        if self.count == self.profile_step:
            import torch.profiler as tp

            activities = [tp.ProfilerActivity.CPU] + ([tp.ProfilerActivity.CUDA] if self.device.cuda else [])
            self.device.synchronize()
            self.profiler = tp.profile(activities=activities)
            self.profiler.__enter__()
            self._t0 = time.perf_counter()

    def step_end(self) -> None:
        if self.profiler is not None:
            self.device.synchronize()
            self.step_s = time.perf_counter() - self._t0
            self.profiler.__exit__(None, None, None)
            events = self.profiler.key_averages()
            key = "self_device_time_total" if self.device.cuda else "self_cpu_time_total"
            rows = sorted(events, key=lambda e: getattr(e, key), reverse=True)[: self.top]
            self.table = [
                {"op": e.key, "self_s": getattr(e, key) / 1e6, "total_s": e.cpu_time_total / 1e6, "calls": e.count}
                for e in rows
            ]
            self.profiler = None
        self.count += 1


def profile_variants(cfg, names, checkpoint, workdir, device) -> dict:
    """One warm-up step, then one profiled step, per variant, one variant after another: where the time goes."""
    results = {}
    for name in names:
        runner = make_runner(name, cfg, checkpoint, workdir, cfg.seq, 2, device)
        runner.setup()
        turn = ProfilingTurn(device, profile_step=1)
        runner.run(turn)
        runner.close()
        results[name] = {"step_s": turn.step_s, "top_ops": turn.table}
    return results


def run_interleaved(runners: list, device: Device, rounds: int) -> dict[str, Turn]:
    """Run the runners' steps in rounds, one variant at a time; the order is reversed every other round."""
    turns = [Turn(r.name, device) for r in runners]
    threads = [turn.run_thread(runner.run) for turn, runner in zip(turns, runners)]
    for rnd in range(rounds + 1):  # round 0: each variant's set-up up to its first step; then one step each
        for turn in turns if rnd % 2 == 1 else turns[::-1]:
            if not turn.finished:
                turn.grant()
    for turn in turns:  # let each one finish (end-of-training work, one at a time)
        while not turn.finished:
            turn.grant()
    for thread in threads:
        thread.join()
    return {turn.name: turn for turn in turns}


# ------------------------------------------------------------------------------------------------ variants
def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def training_kwargs(cfg: BenchConfig, output_dir: Path, seq: int, n_steps: int) -> dict:
    """Settings shared by every trainer variant (and read by the floor for its optimizer)."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.pairs,
        max_steps=n_steps,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        max_length=seq,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cfg.device == "cpu",
        bf16=cfg.dtype == "bfloat16",
        activation_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": cfg.dtype},
    )


class TrainerRunner:
    """A, A_prime, B or P: a real trainer whose ``train()`` runs in the rotation through a callback."""

    def __init__(self, name: str, cfg: BenchConfig, checkpoint: Path, workdir: Path, seq: int, n_steps: int):
        self.name, self.cfg, self.seq, self.n_steps = name, cfg, seq, n_steps
        self.checkpoint, self.output_dir = checkpoint, workdir / f"out-{name}-{seq}"
        self.trainer = None
        self.precompute_s: float | None = None

    def setup(self) -> None:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from transformers.trainer_callback import PrinterCallback
        from trl import DPOConfig, DPOTrainer

        from trl_ipo import IPOConfig, IPOTrainer

        cfg, name = self.cfg, self.name
        kwargs = training_kwargs(cfg, self.output_dir, self.seq, self.n_steps)
        rows = make_rows(cfg, self.seq, cfg.pairs * self.n_steps, preference=name == "A_prime")
        tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        if name == "B":
            trainer_cls, args = DPOTrainer, DPOConfig(loss_type=["ipo"], **kwargs)
        elif name == "A_prime":
            trainer_cls, args = IPOTrainer, IPOConfig(preference_column="q", symmetric=True, **kwargs)
        elif name == "P":
            trainer_cls, args = precompute_timed_trainer(), IPOConfig(precompute_ref_log_probs=True, **kwargs)
        else:
            trainer_cls, args = IPOTrainer, IPOConfig(**kwargs)
        self.trainer = trainer_cls(
            model=str(self.checkpoint), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
        self.trainer.remove_callback(PrinterCallback)
        self.precompute_s = getattr(self.trainer, "precompute_seconds", None)
        lengths = {len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in self.trainer.train_dataset}
        lengths |= {len(r["prompt_ids"]) + len(r["rejected_ids"]) for r in self.trainer.train_dataset}
        if lengths != {self.seq}:
            raise RuntimeError(f"variant {name}: sequences tokenized to lengths {sorted(lengths)}, expected {self.seq}")

    def run(self, turn) -> None:
        from transformers import TrainerCallback

        class StepGate(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                turn.step_begin()

            def on_step_end(self, args, state, control, **kwargs):
                turn.step_end()

        self.trainer.add_callback(StepGate())
        self.trainer.train()

    def close(self) -> None:
        self.trainer = None


class ShapeRunner(TrainerRunner):
    """B, A, S, Pf or SP on a workload shape: varied lengths, ``shape_pairs`` pairs per step."""

    def __init__(self, name, cfg, checkpoint, workdir, shape, n_steps):
        super().__init__(name, cfg, checkpoint, workdir, cfg.shape_max, n_steps)
        self.shape, self.output_dir = shape, workdir / f"out-{name}-{shape}"

    def setup(self) -> None:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from transformers.trainer_callback import PrinterCallback
        from trl import DPOConfig, DPOTrainer

        from trl_ipo import IPOConfig, IPOTrainer

        cfg, name = self.cfg, self.name
        kwargs = training_kwargs(cfg, self.output_dir, cfg.shape_max, self.n_steps)
        kwargs["per_device_train_batch_size"] = cfg.shape_pairs
        if name in ("S", "SP") and cfg.device == "cuda":  # the block mask skips what the branches hide
            kwargs["model_init_kwargs"] = {**kwargs["model_init_kwargs"], "attn_implementation": "flex_attention"}
        if name == "B":
            trainer_cls, args = DPOTrainer, DPOConfig(loss_type=["ipo"], **kwargs)
        else:
            trainer_cls, args = IPOTrainer, IPOConfig(**kwargs, **SHAPE_FLAGS.get(name, {}))
        rows = make_shape_rows(cfg, self.shape)[: cfg.shape_pairs * self.n_steps]
        self.trainer = trainer_cls(
            model=str(self.checkpoint), args=args, train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(self.checkpoint),
        )
        self.trainer.remove_callback(PrinterCallback)


def time_shape(cfg, shape, checkpoint, workdir, device, counts) -> dict:
    """Interleaved timing of the layout variants on one workload shape."""
    n_steps = cfg.shape_warmup + cfg.shape_steps
    runners = [ShapeRunner(n, cfg, checkpoint, workdir, shape, n_steps) for n in cfg.shape_variants]
    for runner in runners:
        runner.setup()
    turns = run_interleaved(runners, device, n_steps)
    work = shape_work(cfg, shape, counts)
    results = {}
    for runner in runners:
        turn = turns[runner.name]
        step = summarise(turn.step_times[cfg.shape_warmup :])
        achieved = work["useful_flops"] / step["median"] / 1e12
        results[runner.name] = {
            "label": SHAPE_VARIANTS[runner.name],
            "step_time_s": step,
            "cpu_time_s": summarise(turn.cpu_times[cfg.shape_warmup :]),
            "samples_per_s": work["pairs"] / step["median"],
            "tokens_per_s": work["real_tokens"] / step["median"],
            "achieved_tflops": achieved,
            "mfu": achieved / device.peak_tflops if device.peak_tflops else None,
        }
        runner.close()
    return {"work": work, "variants": results}


def measure_shape_memory_child(cfg, checkpoint, workdir, result_path) -> None:
    """Child process: each (shape, variant) alone, one after another; peak memory of each."""
    device = Device(cfg)
    warm = ShapeRunner(cfg.shape_variants[0], cfg, checkpoint, workdir, cfg.shapes[0], 1)
    warm.setup()
    warm.run(FreeRunning())
    warm.close()
    del warm
    results = {}
    for shape in cfg.shapes:
        for name in cfg.shape_variants:
            device.release()
            before = device.memory_now()
            reset = device.reset_peak()
            runner = ShapeRunner(name, cfg, checkpoint, workdir, shape, cfg.shape_memory_steps)
            runner.setup()
            runner.run(FreeRunning())
            device.synchronize()
            peak = device.memory_peak()
            runner.close()
            del runner
            results.setdefault(shape, {})[name] = {
                "metric": device.memory_metric(), "peak_bytes": peak, "before_bytes": before,
                "added_bytes": peak - before, "peak_reset": reset, "steps": cfg.shape_memory_steps,
            }
    result_path.write_text(json.dumps(results))


def shape_checks(shapes: dict, memory: dict | None) -> dict:
    """Best layout (S, Pf, SP) per shape against B: samples/s ratio (wall and CPU time) and peak memory."""
    checks = {}
    for shape, row in shapes.items():
        vs = row["variants"]
        if "B" not in vs:
            continue
        layouts = [n for n in ("S", "Pf", "SP") if n in vs]
        if not layouts:
            continue
        best = max(layouts, key=lambda n: vs[n]["samples_per_s"])
        cpu = {n: vs["B"]["cpu_time_s"]["median"] / vs[n]["cpu_time_s"]["median"] for n in layouts}
        entry = {
            "best": best,
            "speedup_vs_B": {n: vs[n]["samples_per_s"] / vs["B"]["samples_per_s"] for n in layouts + ["A"] if n in vs},
            "cpu_speedup_vs_B": cpu,
            "speedup_vs_A": ({n: vs[n]["samples_per_s"] / vs["A"]["samples_per_s"] for n in layouts}
                             if "A" in vs else None),
        }
        target = SHAPE_TARGETS.get(shape)
        if target is not None:
            entry["target"] = target
            entry["met"] = entry["speedup_vs_B"][best] >= target
        mem = (memory or {}).get(shape)
        if mem and "B" in mem:
            entry["memory_vs_B"] = {n: mem[n]["peak_bytes"] / mem["B"]["peak_bytes"] for n in layouts if n in mem}
            entry["memory_met"] = all(v <= 1.0 for v in entry["memory_vs_B"].values())
        checks[shape] = entry
    return checks


def render_shapes(report: dict) -> str:
    """The workload-shape tables of docs/benchmarks.md."""
    shapes, memory = report.get("shapes") or {}, report.get("shape_memory") or {}
    if not shapes:
        return ""
    with_mfu = any(v.get("mfu") is not None for row in shapes.values() for v in row["variants"].values())
    head = ("| shape | variant | samples/s | × B | × A | tokens/s | median step (s) | CPU s/step | "
            + ("MFU | " if with_mfu else "") + "peak memory (MiB) | × B memory |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for shape, row in shapes.items():
        vs, mem = row["variants"], memory.get(shape, {})
        for name, v in vs.items():
            x_b = v["samples_per_s"] / vs["B"]["samples_per_s"] if "B" in vs else None
            x_a = v["samples_per_s"] / vs["A"]["samples_per_s"] if "A" in vs else None
            m = mem.get(name)
            mb = m["peak_bytes"] / mem["B"]["peak_bytes"] if m and "B" in mem else None
            cells = [shape, name, f"{v['samples_per_s']:.3f}", "–" if x_b is None else f"{x_b:.2f}",
                     "–" if x_a is None else f"{x_a:.2f}", f"{v['tokens_per_s']:,.0f}",
                     f"{v['step_time_s']['median']:.3f}", f"{v['cpu_time_s']['median']:.2f}"]
            if with_mfu:
                cells.append("–" if v["mfu"] is None else f"{v['mfu']:.3f}")
            cells += ["–" if m is None else f"{m['peak_bytes'] / 2**20:,.0f}", "–" if mb is None else f"{mb:.2f}"]
            out.append("| " + " | ".join(cells) + " |")
    out += ["", "| shape | tokens in the padded layout (real / with padding) | tokens with shared prompts "
                "| best layout | its samples/s × B (wall / CPU time) | target | peak memory ≤ B |",
            "|---|---|---|---|---|---|---|"]
    for shape, check in (report.get("shape_checks") or {}).items():
        work = shapes[shape]["work"]
        best = check["best"]
        target = check.get("target")
        verdict = "–" if target is None else f"≥ {target}: {'met' if check['met'] else '**missed**'}"
        memory_ok = {True: "yes", False: "**no**", None: "–"}[check.get("memory_met")]
        out.append(f"| {shape} | {work['real_tokens']:,.0f} / {work['padded_tokens']:,.0f} | "
                   f"{work['shared_tokens']:,.0f} | {best} | {check['speedup_vs_B'][best]:.2f} / "
                   f"{check['cpu_speedup_vs_B'][best]:.2f} | {verdict} | {memory_ok} |")
    return "\n".join(out)


def precompute_timed_trainer():
    """IPOTrainer that records how long ``precompute_ref_log_probs`` took (it runs at construction)."""
    from trl_ipo import IPOTrainer

    class PrecomputeTimedIPOTrainer(IPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                self.precompute_seconds = getattr(self, "precompute_seconds", 0.0) + time.perf_counter() - start

    return PrecomputeTimedIPOTrainer


class FloorRunner:
    """F: what any IPO step must do — the model's own compute, with TRL's fused LM head (log-probs only).

    F_metrics: the same, with the head also computing the per-token outputs DPOTrainer logs.
    """

    def __init__(self, cfg: BenchConfig, checkpoint: Path, workdir: Path, seq: int, n_steps: int, device: Device,
                 name: str = "F"):
        self.cfg, self.checkpoint, self.seq, self.n_steps, self.device = cfg, checkpoint, seq, n_steps, device
        self.name = name
        self.head_outputs = TRL_HEAD_OUTPUTS if name == "F_metrics" else ("log_probs",)
        self.output_dir = workdir / f"out-{name}-{seq}"

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
        from trl import DPOConfig
        from trl.trainer.dpo_trainer import DataCollatorForPreference
        from trl.trainer.utils import add_fused_lm_head

        cfg = self.cfg
        torch_device = torch.device("cuda" if self.device.cuda else "cpu")
        dtype = getattr(torch, cfg.dtype)
        self.policy = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=dtype).to(torch_device)
        self.ref = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=dtype).to(torch_device)
        add_fused_lm_head(self.policy, outputs=self.head_outputs)
        add_fused_lm_head(self.ref)
        self.policy.train()
        self.ref.eval().requires_grad_(False)
        args = DPOConfig(**training_kwargs(cfg, self.output_dir, self.seq, self.n_steps))
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, self.policy)
        self.optimizer = optimizer_cls(self.policy.parameters(), **optimizer_kwargs)
        self.autocast = lambda: torch.autocast(torch_device.type, dtype=dtype, enabled=args.bf16)

        tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=self.seq)
        rows = make_rows(cfg, self.seq, cfg.pairs * self.n_steps, preference=False)
        eos = [tokenizer.eos_token_id]
        examples = [
            {
                "prompt_ids": tokenizer(r["prompt"])["input_ids"],
                "chosen_ids": tokenizer(r["chosen"])["input_ids"] + eos,
                "rejected_ids": tokenizer(r["rejected"])["input_ids"] + eos,
            }
            for r in rows
        ]
        self.batches = []
        for i in range(0, len(examples), cfg.pairs):
            batch = collate(examples[i : i + cfg.pairs])
            if tuple(batch["input_ids"].shape) != (2 * cfg.pairs, self.seq):
                raise RuntimeError(f"floor batch has shape {tuple(batch['input_ids'].shape)}, expected "
                                   f"{(2 * cfg.pairs, self.seq)}")
            self.batches.append({k: v.to(torch_device) for k, v in batch.items()})

    def step(self, batch) -> None:
        import torch

        from trl_ipo.losses import ipo_loss

        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                      fused_lm_head=True, use_cache=False)
        with self.autocast():
            logps = self.policy(**inputs).log_probs.sum(dim=1)
            with torch.no_grad():
                ref_logps = self.ref(**inputs).log_probs.sum(dim=1)
        chosen, rejected = (logps - ref_logps).chunk(2)
        ipo_loss(chosen, rejected, self.cfg.beta).mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, turn) -> None:
        for i in range(self.n_steps):
            turn.step_begin()
            self.step(self.batches[i % len(self.batches)])
            turn.step_end()

    def close(self) -> None:
        self.policy = self.ref = self.optimizer = self.batches = None


def make_runner(name: str, cfg: BenchConfig, checkpoint: Path, workdir: Path, seq: int, n_steps: int, device: Device):
    if name in ("F", "F_metrics"):
        return FloorRunner(cfg, checkpoint, workdir, seq, n_steps, device, name)
    return TrainerRunner(name, cfg, checkpoint, workdir, seq, n_steps)


# ------------------------------------------------------------------------------------------------ measurements
def summarise(values: list[float]) -> dict:
    return {"median": median(values), "min": min(values), "max": max(values), "all": values} if values else {}


def time_variants(cfg, names, checkpoint, workdir, seq, warmup, steps, device, counts, before_timed=None) -> dict:
    """Interleaved timing of ``names`` at ``seq``: per-variant step times, throughput and precompute time.

    ``before_timed`` is called once the untimed set-ups are done, before the timed precompute of P and the steps.
    """
    runners = [make_runner(n, cfg, checkpoint, workdir, seq, warmup + steps, device) for n in names]
    for runner in runners:
        if runner.name != "P":
            runner.setup()
    if before_timed is not None:
        before_timed()
    for runner in runners:
        if runner.name == "P":
            runner.setup()
    turns = run_interleaved(runners, device, warmup + steps)
    results = {}
    for runner in runners:
        turn = turns[runner.name]
        if len(turn.step_times) != warmup + steps:
            raise RuntimeError(f"variant {runner.name} ran {len(turn.step_times)} steps, expected {warmup + steps}")
        step = summarise(turn.step_times[warmup:])
        entry = {
            "label": VARIANTS[runner.name],
            "seq": seq,
            "timed_steps": steps,
            "warmup_steps": warmup,
            "step_time_s": step,
            "iteration_time_s": summarise(turn.iteration_times[warmup:]),
            "cpu_time_s": summarise(turn.cpu_times[warmup:]),
            "sys_time_s": summarise(turn.sys_times[warmup:]),
        }
        entry.update(throughput(cfg, runner.name, seq, step["median"], counts, device))
        if getattr(runner, "precompute_s", None) is not None:
            entry["precompute_s"] = runner.precompute_s
            entry["precompute_pairs"] = cfg.pairs * (warmup + steps)
        results[runner.name] = entry
        runner.close()
    return results


def throughput(cfg, name, seq, step_s, counts, device) -> dict:
    flops = step_flops(cfg, name, seq, counts["non_embedding_parameters"])
    achieved = flops / step_s / 1e12
    return {
        "tokens_per_step": tokens_per_step(cfg, seq),
        "tokens_per_s": tokens_per_step(cfg, seq) / step_s,
        "model_flops_per_step": flops,
        "achieved_tflops": achieved,
        "mfu": achieved / device.peak_tflops if device.peak_tflops else None,
    }


def measure_memory_child(cfg: BenchConfig, checkpoint: Path, workdir: Path, result_path: Path) -> None:
    """Child process: each variant alone, one after another; peak memory per variant."""
    device = Device(cfg)
    results = {}
    # First use of the libraries (imports, caches, thread pools) is paid once, here, not by the first variant measured.
    first = next(n for n in cfg.variants if n in MEMORY_VARIANTS)
    warm = make_runner(first, cfg, checkpoint, workdir, cfg.seq, 1, device)
    warm.setup()
    warm.run(FreeRunning())
    warm.close()
    del warm
    for name in [n for n in cfg.variants if n in MEMORY_VARIANTS]:
        device.release()
        before = device.memory_now()
        reset = device.reset_peak()
        runner = make_runner(name, cfg, checkpoint, workdir, cfg.seq, cfg.memory_steps, device)
        runner.setup()
        runner.run(FreeRunning())
        device.synchronize()
        peak = device.memory_peak()
        runner.close()
        del runner
        results[name] = {
            "metric": device.memory_metric(),
            "peak_bytes": peak,
            "before_bytes": before,
            "added_bytes": peak - before,
            "peak_reset": reset,
            "steps": cfg.memory_steps,
        }
    result_path.write_text(json.dumps(results))


def start_memory_child(cfg: BenchConfig, workdir: Path) -> tuple[subprocess.Popen, Path]:
    """Started early so its imports overlap the parent's; it waits on stdin until the checkpoint exists."""
    config_path, result_path = workdir / "memory-config.json", workdir / "memory-result.json"
    config_path.write_text(json.dumps(asdict(cfg)))
    env = dict(os.environ)
    # Large buffers are mmap-ed and unmapped when freed, so one variant's freed memory does not hide the next's peak.
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--memory-child", str(workdir)],
        stdin=subprocess.PIPE, env=env, text=True,
    )
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
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    code = subprocess.call([sys.executable, os.path.abspath(__file__), "--shape-memory-child", str(workdir)], env=env)
    if code != 0:
        raise RuntimeError(f"shape memory child process failed with exit code {code}")
    return json.loads((workdir / "shape-memory-result.json").read_text())


def _init_torch(cfg: BenchConfig) -> None:
    import torch

    torch.set_num_threads(cfg.threads)
    _quiet_libraries()
    import trl  # noqa: F401  (imported up front: in the memory child this overlaps the parent's start-up)

    import trl_ipo  # noqa: F401


# ------------------------------------------------------------------------------------------------ report
def ratios(variants: dict, figure: str = "step_time_s") -> dict:
    def r(a, b):
        if a in variants and b in variants:
            return variants[a][figure]["median"] / variants[b][figure]["median"]
        return None

    return {"A/B": r("A", "B"), "A_prime/A": r("A_prime", "A"), "A/F": r("A", "F"), "P/A": r("P", "A"),
            "F_metrics/F": r("F_metrics", "F"), "A/F_metrics": r("A", "F_metrics")}


def target_checks(ratio: dict, memory: dict | None) -> dict:
    checks = {k: {"value": v, "max": TARGETS[k], "met": v <= TARGETS[k]} for k, v in ratio.items()
              if v is not None and k in TARGETS}
    if memory and "A" in memory and "B" in memory:
        a, b = memory["A"]["peak_bytes"], memory["B"]["peak_bytes"]
        checks["memory A<=B"] = {"A_bytes": a, "B_bytes": b, "value": a / b, "max": 1.0, "met": a <= b}
    return checks


def machine_info(device: Device, cfg: BenchConfig) -> dict:
    import accelerate
    import torch
    import transformers
    import trl

    import trl_ipo

    return {
        "device": device.kind,
        "device_name": device.name,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "peak_tflops": device.peak_tflops,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "accelerate": accelerate.__version__, "trl_ipo": getattr(trl_ipo, "__version__", None),
        },
    }


def print_table(report: dict) -> None:
    lines = [f"{'variant':8} {'step s':>9} {'iter s':>9} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'peak MiB':>9}"]
    memory = report.get("memory") or {}
    for name, v in report["variants"].items():
        mem = memory.get(name, {}).get("peak_bytes")
        mfu = v["mfu"]
        lines.append(
            f"{name:8} {v['step_time_s']['median']:9.4f} {v['iteration_time_s'].get('median', float('nan')):9.4f} "
            f"{v['tokens_per_s']:9.1f} {v['achieved_tflops']:8.4f} {'-' if mfu is None else f'{mfu:6.3f}':>6} "
            f"{'-' if mem is None else f'{mem / 2**20:9.1f}':>9}"
        )
    for key, check in report["targets"].items():
        lines.append(f"{key:12} {check['value']:.3f} (target <= {check['max']}) {'met' if check['met'] else 'MISSED'}")
    for row in report["scan"]:
        lines.append(f"scan seq {row['seq']:5}: " + ", ".join(
            f"{n} {row['variants'][n]['step_time_s']['median']:.4f} s" for n in row["variants"]))
    for shape, check in (report.get("shape_checks") or {}).items():
        speed = ", ".join(f"{n} {x:.2f}x" for n, x in check["speedup_vs_B"].items())
        lines.append(f"shape {shape:17} samples/s vs B: {speed}; memory ok: {check.get('memory_met')}")
    print("\n".join(lines), file=sys.stderr)


def render_markdown(report: dict) -> str:
    """The tables of docs/benchmarks.md, from a benchmark JSON."""
    memory = report.get("memory") or {}
    mib = lambda b: f"{b / 2**20:,.0f}"  # noqa: E731
    out = [
        "| variant | what | median step (s) | min–max (s) | iteration (s) | CPU s/step (system) | tokens/s "
        "| TFLOP/s | "
        + ("MFU | " if any(v["mfu"] is not None for v in report["variants"].values()) else "")
        + "peak memory (MiB) | added by the variant (MiB) |",
    ]
    with_mfu = "MFU" in out[0]
    out.append("|" + "---|" * (out[0].count("|") - 1))
    for name, v in report["variants"].items():
        step, it, mem = v["step_time_s"], v["iteration_time_s"], memory.get(name)
        cells = [
            name.replace("_prime", "′"), v["label"], f"{step['median']:.3f}",
            f"{step['min']:.3f}–{step['max']:.3f}",
            f"{it['median']:.3f}" if it else "–",
            f"{v['cpu_time_s']['median']:.2f} ({v['sys_time_s']['median']:.2f})" if v.get("cpu_time_s") else "–",
            f"{v['tokens_per_s']:,.0f}", f"{v['achieved_tflops']:.4f}",
        ]
        if with_mfu:
            cells.append("–" if v["mfu"] is None else f"{v['mfu']:.3f}")
        cells += [mib(mem["peak_bytes"]) if mem else "–", mib(mem["added_bytes"]) if mem else "–"]
        out.append("| " + " | ".join(cells) + " |")
    cpu_ratios = report.get("cpu_time_ratios") or {}
    cpu = lambda k: f"{cpu_ratios[k]:.3f}" if cpu_ratios.get(k) is not None else "–"  # noqa: E731
    out += ["", "| ratio | measured (wall) | on CPU time | target | |", "|---|---|---|---|---|"]
    for key, check in report["targets"].items():
        label = key.replace("_prime", "′")
        value = f"{check['value']:.3f}"
        verdict = "met" if check["met"] else "**missed**"
        on_cpu = cpu(key) if key in cpu_ratios else "–"
        out.append(f"| {label} | {value} | {on_cpu} | ≤ {check['max']} | {verdict} |")
    for key, value in report["ratios"].items():
        if key not in report["targets"] and value is not None:
            out.append(f"| {key.replace('_prime', '′')} | {value:.3f} | {cpu(key)} | (diagnostic) | |")
    if "P" in report["variants"] and "precompute_s" in report["variants"]["P"]:
        p = report["variants"]["P"]
        out += ["", f"P's precompute: {p['precompute_s']:.2f} s for {p['precompute_pairs']} pairs "
                    f"({p['precompute_s'] / p['precompute_pairs']:.3f} s per pair, done once before training)."]
    if report["scan"]:
        names = list(report["scan"][0]["variants"])
        out += ["", "| sequence | tokens/step | " + " | ".join(f"{n} step (s)" for n in names)
                + " | " + " | ".join(f"{n} tokens/s" for n in names) + " |",
                "|" + "---|" * (2 + 2 * len(names))]
        for row in report["scan"]:
            vs = row["variants"]
            out.append(f"| {row['seq']} | {vs[names[0]]['tokens_per_step']:,} | "
                       + " | ".join(f"{vs[n]['step_time_s']['median']:.3f}" for n in names) + " | "
                       + " | ".join(f"{vs[n]['tokens_per_s']:,.0f}" for n in names) + " |")
    return "\n".join(out)


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
            variants = time_variants(cfg, cfg.variants, checkpoint, workdir, cfg.seq, cfg.warmup, cfg.steps, device,
                                     counts, before_timed=finish_memory)
        else:
            finish_memory()
        phases["timing_s"] = time.perf_counter() - phases.pop("timed_from")
        shapes_start, shapes = time.perf_counter(), {}
        for shape in cfg.shapes:
            shapes[shape] = time_shape(cfg, shape, checkpoint, workdir, device, counts)
        phases["shapes_s"] = time.perf_counter() - shapes_start
        scan_start = time.perf_counter()

        scan = []
        for seq in ([] if cfg.only_shapes else cfg.scan_seqs):
            names = list(cfg.scan_variants)
            reuse = {n: variants[n] for n in names if seq == cfg.seq and n in variants}
            todo = [n for n in names if n not in reuse]
            row = dict(reuse)
            if todo:
                row.update(time_variants(cfg, todo, checkpoint, workdir, seq, cfg.scan_warmup, cfg.scan_steps,
                                         device, counts))
            scan.append({"seq": seq, "variants": {n: row[n] for n in names},
                         "reused_from_main": sorted(reuse)})
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
            "model": {**counts, "architecture": "Qwen2 (random init)", "dtype": cfg.dtype,
                      "flops_per_token": flops_per_token(cfg, cfg.seq, counts["non_embedding_parameters"])},
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


if __name__ == "__main__":
    sys.exit(main())
