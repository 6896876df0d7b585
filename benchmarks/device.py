"""The process and its device: torch set-up, and the few device-specific operations (synchronise, memory
probes, name and peak FLOP/s)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import re
import warnings
from pathlib import Path

from benchmarks.config import PEAK_TFLOPS, BenchConfig


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
            # hand freed heap pages back, so the next variant starts from a clean level
            with contextlib.suppress(OSError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)


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


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _init_torch(cfg: BenchConfig) -> None:
    import torch

    torch.set_num_threads(cfg.threads)
    _quiet_libraries()
    import trl  # noqa: F401  (imported up front: in the memory child this overlaps the parent's start-up)

    import trl_ipo  # noqa: F401
