"""The benchmark rows: TRL's IPO (B) and IPOTrainer padded (A), prefix-shared (S), padding-free (Pf) and both (SP),
on random-init Qwen2 models shaped like Qwen2-1.5B and Qwen2-0.5B, per workload shape.

The variants of one (model, workload) row are built side by side and timed in the rotation of
:func:`benchmarks.timing.run_interleaved`: one optimizer step of each variant per round, the order reversed every
other round, so drift cancels. Each variant is its own trainer on its own copies of the same weights. Peak memory
per variant: its weights, reference and optimizer state, plus the largest allocation increase during one of its
steps (``max_memory_allocated`` reset at the start of the step; on CPU the resident set size).

MFU: the useful model FLOPs of the padded layout's real tokens, PaLM's convention (``benchmarks.workloads.
shape_work``: a training pass is 3 forwards, plus the reference forward; recomputation under activation
checkpointing is not counted), over the measured GEMM rate ``gemm_tflops``.
"""

from __future__ import annotations

import time
import traceback

from benchmarks.config import SHAPE_FLAGS, BenchConfig
from benchmarks.device import Device
from benchmarks.gpucheck import models
from benchmarks.gpucheck.runs import build_trainer, checkpointing_field, train_args
from benchmarks.gpucheck.settings import TARGETS
from benchmarks.timing import ProfilingTurn, run_interleaved, summarise
from benchmarks.workloads import make_shape_rows, shape_work

VARIANTS = (
    ("B", "sdpa"),
    ("A", "sdpa"),
    ("S", "sdpa"),
    ("S", "flex_attention"),
    ("Pf", "sdpa"),
    ("SP", "sdpa"),
    ("SP", "flex_attention"),
)
# Seconds a first row of a model is expected to take (set-up included); later rows use the measured time.
FIRST_ROW_ESTIMATE_S = {"qwen2-1.5b-shape": 75.0, "qwen2-0.5b-shape": 40.0}


class BenchRunner:
    """One variant in the rotation: set up its trainer, run its steps through the turn, record its memory."""

    def __init__(self, ctx, variant, attn, base, shape, rows, n_steps, device: Device):
        self.ctx, self.variant, self.attn, self.base, self.shape = ctx, variant, attn, base, shape
        self.rows, self.n_steps, self.device = rows, n_steps, device
        self.name = f"{variant}/{attn}"
        self.transient = 0
        self.static_bytes = 0

    def setup(self) -> None:
        from trl import DPOConfig, DPOTrainer

        from trl_ipo import IPOConfig, IPOTrainer

        cfg = self.ctx.cfg
        dtype = "bfloat16" if self.device.cuda else "float32"
        policy, ref = models.copies(self.base, dtype, self.attn, perturb=False)
        out = self.ctx.workdir / f"bench-{self.shape.name}-{self.variant}-{self.attn}"
        if self.variant == "B":
            trainer_cls, config_cls, flags = DPOTrainer, DPOConfig, {"loss_type": ["ipo"]}
        else:
            trainer_cls, config_cls, flags = IPOTrainer, IPOConfig, dict(SHAPE_FLAGS.get(self.variant, {}))
        flags[checkpointing_field(config_cls)] = self.shape.activation_checkpointing
        args = train_args(cfg, out, cfg.bench_data, self.n_steps, bf16=dtype == "bfloat16", **flags)
        self.trainer = build_trainer(trainer_cls, config_cls, policy, ref, self.ctx.tok, self.rows, args)

    def run(self, turn) -> None:
        from transformers import TrainerCallback

        runner, device = self, self.device

        class Gate(TrainerCallback):  # first: the step starts only when the rotation grants the turn
            def on_step_begin(self, args, state, control, **kwargs):
                turn.step_begin()

            def on_step_end(self, args, state, control, **kwargs):
                turn.step_end()

        class MemoryProbe(TrainerCallback):  # second: inside the granted step
            def on_step_begin(self, args, state, control, **kwargs):
                device.synchronize()
                self.before = device.memory_now()
                device.reset_peak()

            def on_step_end(self, args, state, control, **kwargs):
                device.synchronize()
                runner.transient = max(runner.transient, device.memory_peak() - self.before)

        self.trainer.add_callback(Gate())
        self.trainer.add_callback(MemoryProbe())
        self.trainer.train()
        self.static_bytes = _static_bytes(self.trainer)

    def close(self) -> None:
        self.trainer = None


def _static_bytes(trainer) -> int:
    """Weights of policy and reference, and the optimizer state: what the variant holds between steps."""
    tensors = list(trainer.model.parameters())
    if trainer.ref_model is not None:
        tensors += list(trainer.ref_model.parameters())
    for state in trainer.optimizer.state.values():
        tensors += [v for v in state.values() if hasattr(v, "numel")]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_bench(ctx) -> dict:
    """Every (model, workload) row that fits the time left; the targets; a profile when a target is missed."""
    cfg = ctx.cfg
    device = Device(BenchConfig(device=cfg.device, dtype="bfloat16" if cfg.device == "cuda" else "float32"))
    variants = [(v, a) for v, a in VARIANTS if not (a == "flex_attention" and ctx.flex_error)]
    rows, skipped, groups = [], [], []
    if len(variants) < len(VARIANTS):
        for v, a in VARIANTS:
            if a == "flex_attention":
                reason = f"flex_attention cannot train on {cfg.device}: {ctx.flex_error}"
                skipped += [{"model": s.name, "workload": w, "variant": v, "attn": a, "reason": reason}
                            for s in cfg.bench_models for w in cfg.workloads]  # fmt: skip
    for shape in cfg.bench_models:
        base, last = None, None
        for workload in cfg.workloads:
            estimate = last or FIRST_ROW_ESTIMATE_S.get(shape.name, 10.0)
            if ctx.remaining() < estimate:
                reason = f"time budget: {ctx.remaining():.0f} s left, the row needs about {estimate:.0f} s"
                skipped.append({"model": shape.name, "workload": workload, "reason": reason})
                continue
            started = time.perf_counter()
            try:
                if base is None:
                    base = ctx.model(shape, keep=False)
                group = _row(ctx, shape, base, workload, variants, device)
            except Exception as err:  # recorded; the next rows still run
                traceback.print_exc()
                skipped.append({"model": shape.name, "workload": workload, "reason": f"failed: {err!r}"[:1000]})
                device.release()
                continue
            rows += group["rows"]
            groups.append(group)
            last = 1.1 * (time.perf_counter() - started)
        base = None
        device.release()
    targets = _targets(groups, cfg.bench_models[0].name)
    profile = None
    missed = [t for t in targets if not (t["met"] and t["memory_met"])]
    if missed and ctx.remaining() > 30:
        profile = _profile(ctx, missed[0], device)
    return {"bench": rows, "bench_skipped": skipped, "targets": targets, "profile": profile}


def _row(ctx, shape, base, workload, variants, device) -> dict:
    cfg = ctx.cfg
    n_steps = cfg.bench_warmup + cfg.bench_steps
    wcfg = models.workload_config(shape, cfg.bench_data, 0, n_steps, seed=cfg.seed)
    data = make_shape_rows(wcfg, workload)[: cfg.bench_data.pairs * n_steps]
    work = shape_work(wcfg, workload, models.counts(base, shape))  # per step, averaged over all the row's batches
    runners = [BenchRunner(ctx, v, a, base, shape, data, n_steps, device) for v, a in variants]
    for runner in runners:
        runner.setup()
    turns = run_interleaved(runners, device, n_steps)
    out = []
    for runner in runners:
        times = turns[runner.name].step_times
        if len(times) != n_steps:
            raise RuntimeError(f"{runner.name} ran {len(times)} steps, expected {n_steps}")
        step = summarise(times[cfg.bench_warmup :])["median"]
        achieved = work["useful_flops"] / step / 1e12
        out.append(
            {
                "model": shape.name,
                "workload": workload,
                "variant": runner.variant,
                "attn": runner.attn,
                "dtype": "bfloat16" if device.cuda else "float32",
                "pairs": cfg.bench_data.pairs,
                "step_s": step,
                "step_s_all": times,
                "samples_per_s": work["pairs"] / step,
                "tokens_per_s": work["real_tokens"] / step,
                "achieved_tflops": achieved,
                "mfu": achieved / ctx.gemm_tflops if ctx.gemm_tflops else None,
                "peak_mem_gib": (runner.static_bytes + runner.transient) / 2**30,
                "activation_checkpointing": shape.activation_checkpointing,
                "work": work,
            }
        )
        runner.close()
    device.release()
    return {"model": shape.name, "workload": workload, "rows": out}


def _targets(groups, model: str) -> list[dict]:
    """Best packed layout against B on ``model`` (the largest benchmarked): samples/s and peak memory."""
    out = []
    for group in groups:
        if group["model"] != model or group["workload"] not in TARGETS:
            continue
        by = {f"{r['variant']}/{r['attn']}": r for r in group["rows"]}
        b = by.get("B/sdpa")
        packed = [r for k, r in by.items() if k.split("/")[0] in ("S", "Pf", "SP")]
        if b is None or not packed:
            continue
        best = max(packed, key=lambda r: r["samples_per_s"])
        target = TARGETS[group["workload"]]
        out.append(
            {
                "model": model,
                "workload": group["workload"],
                "best": f"{best['variant']}/{best['attn']}",
                "speedup_vs_B": best["samples_per_s"] / b["samples_per_s"],
                "target": target,
                "met": best["samples_per_s"] / b["samples_per_s"] >= target,
                "memory_vs_B": best["peak_mem_gib"] / b["peak_mem_gib"],
                "memory_met": best["peak_mem_gib"] <= b["peak_mem_gib"],
            }
        )
    return out


def _profile(ctx, target: dict, device: Device) -> dict:
    """One step of the missed row's best packed variant under torch.profiler: the top operators and kernels by
    self device time (CPU time on CPU)."""
    cfg = ctx.cfg
    shape = next(s for s in cfg.bench_models if s.name == target["model"])
    variant, attn = target["best"].split("/")
    wcfg = models.workload_config(shape, cfg.bench_data, 0, 2, seed=cfg.seed)
    data = make_shape_rows(wcfg, target["workload"])[: cfg.bench_data.pairs * 2]
    runner = BenchRunner(ctx, variant, attn, ctx.model(shape, keep=False), shape, data, 2, device)
    runner.setup()
    turn = ProfilingTurn(device, profile_step=1, top=20)
    runner.run(turn)
    runner.close()
    device.release()
    return {
        "model": shape.name,
        "workload": target["workload"],
        "variant": variant,
        "attn": attn,
        "step_s": turn.step_s,
        "sort": "self_device_time_total" if device.cuda else "self_cpu_time_total",
        "top": turn.table,
    }
