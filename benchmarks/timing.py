"""Timing: the rotation that runs one variant at a time in alternating order, the timed steps (wall and CPU
time), throughput and MFU, the workload-shape timings and the profiler pass."""

from __future__ import annotations

import os
import threading
import time
from statistics import median

from benchmarks.config import SHAPE_VARIANTS, VARIANTS
from benchmarks.device import Device
from benchmarks.variants import ShapeRunner, make_runner
from benchmarks.workloads import shape_work, step_flops, tokens_per_step


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
    threads = [turn.run_thread(runner.run) for turn, runner in zip(turns, runners, strict=True)]
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
