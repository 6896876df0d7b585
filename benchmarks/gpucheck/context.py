"""What every check shares: the configuration, the tokenizer, the base models (built once), the time budget,
the machine (versions, the measured GEMM rate) and whether flex attention can train on the device."""

from __future__ import annotations

import platform
import time
from importlib import metadata

from benchmarks.gpucheck import models


class Context:
    def __init__(self, cfg, workdir):
        self.cfg, self.workdir = cfg, workdir
        self.started = time.perf_counter()
        self.tok = models.tokenizer()
        self._models = {}
        self.flex_error = probe_flex(cfg.device)
        self.gemm = measure_gemm(cfg.device, small=cfg.tiny or cfg.device == "cpu")
        self.gemm_tflops = self.gemm["tflops"]

    def model(self, shape, keep: bool = True):
        """The fp32 base model of ``shape`` on the device (the same weights on every call); ``keep=False`` for
        the large benchmark models, which are built once per use and then released."""
        if shape.name in self._models:
            return self._models[shape.name]
        model = models.build(shape, self.tok, self.cfg.device, self.cfg.seed)
        if keep:
            self._models[shape.name] = model
        return model

    def parameters(self, shape) -> int:
        return sum(p.numel() for p in self.model(shape).parameters())

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        """Seconds until the run's deadline."""
        return self.cfg.deadline - time.time()


def probe_flex(device: str) -> str | None:
    """None when flex attention can run a backward pass on ``device``; else the error it raises (torch 2.13 on
    CPU: ``FlexAttention does not support backward on CPU``)."""
    import torch

    try:
        from torch.nn.attention.flex_attention import flex_attention

        q = torch.randn(1, 1, 16, 16, device=device, requires_grad=True)
        flex_attention(q, q, q).sum().backward()
    except Exception as err:  # any failure means: not on this device
        return f"{type(err).__name__}: {err}"
    return None


def measure_gemm(device: str, small: bool) -> dict:
    """Dense matmul rate: 8192³ bf16 on a GPU (the MFU denominator); a small fp32 (CPU) or bf16 (tiny GPU mode)
    matmul otherwise, labelled as such."""
    import torch

    cuda = device == "cuda"
    n = (1024 if small else 8192) if cuda else 512
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    iters = 50 if cuda else 5
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    seconds = time.perf_counter() - start
    label = f"{device} {str(dtype).removeprefix('torch.')} {n}x{n}x{n} matmul"
    if small:
        label += " (small: CPU or --tiny mode, not a GPU peak figure)"
    return {"tflops": 2.0 * n**3 * iters / seconds / 1e12, "n": n, "dtype": str(dtype), "iters": iters, "label": label}


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "trl", "deepspeed", "datasets", "accelerate", "peft", "pyarrow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)} (cuda)"
    from benchmarks.device import _cpu_name

    return f"{_cpu_name()} (cpu)"
