"""What the GPU check runs in each mode: model shapes, data sizes, step counts, tolerances and time budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.config import BYTE_VOCAB

# ------------------------------------------------------------------------------------------------- tolerances
FP32_RTOL = 1e-5  # fp32 comparisons: losses, grad norms, gradients, metrics (see compare.py for each measure)
BF16_PARITY_RTOL = 1e-3  # IPOTrainer vs TRL's IPO in bf16 when not bit-identical (reason in the check's detail)
BF16_LAYOUT_RTOL = 2e-2  # packed vs padded in bf16: loss and metrics; gradients by relative L2 distance
BF16_GRAD_REL_L2 = 5e-2
FULL_BUDGET_S = 480  # seconds for the whole run, install included (scripts/gpu_check.sh passes the deadline)
QUICK_BUDGET_S = 180
# samples/s of the best packed layout over TRL's IPO (B) on the largest bench model; peak memory at most B's.
TARGETS = {"prompt-heavy": 1.3, "balanced": 1.15, "completion-heavy": 1.0}


@dataclass(frozen=True)
class ModelShape:
    """A random-init causal LM: ``family`` is qwen2, llama or gemma3 (alternating sliding and global layers)."""

    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False
    sliding_window: int | None = None
    activation_checkpointing: bool = False  # in the benchmark: without it a 1.5B step of 16 pairs would not fit


@dataclass(frozen=True)
class DataSize:
    """Synthetic pairs of log-normal lengths (benchmarks.workloads.shape_lengths): per step, mean and max tokens."""

    pairs: int
    mean: int
    max_length: int


def _small(family: str, tiny: bool) -> ModelShape:
    if tiny:
        # head_dim 16: the smallest flex attention's Triton kernels take (for --device cuda --tiny)
        return ModelShape(f"{family}-tiny", family, 32, 2, 2, 1, 64, BYTE_VOCAB, sliding_window=8)
    return ModelShape(f"{family}-h256-l4", family, 256, 4, 4, 2, 512, BYTE_VOCAB, sliding_window=64)


# Qwen2-0.5B and Qwen2-1.5B (their published configs): widths, depth, 14/12 query heads, 2 KV heads, tied embeddings.
QWEN2_0_5B = ModelShape("qwen2-0.5b-shape", "qwen2", 896, 24, 14, 2, 4864, 151936, tied=True)
QWEN2_1_5B = ModelShape(
    "qwen2-1.5b-shape", "qwen2", 1536, 28, 12, 2, 8960, 151936, tied=True, activation_checkpointing=True
)
QWEN2_100M = ModelShape("qwen2-125m", "qwen2", 768, 12, 12, 4, 2048, 32000)
BENCH_TINY = ModelShape("qwen2-bench-tiny", "qwen2", 32, 2, 2, 1, 64, 512, tied=True)
WORKLOADS = ("prompt-heavy", "balanced", "completion-heavy")


@dataclass
class CheckConfig:
    """One run of the check. ``tiny``: the same checks on tiny models (seconds each); ``quick``: checks 2-4 and one
    benchmark row (the largest model, prompt-heavy)."""

    device: str = "cuda"
    tiny: bool = False
    quick: bool = False
    out: Path = Path("outputs/gpu_check")
    deadline: float = 0.0  # UNIX time by which the run must end
    seed: int = 0
    workdir: Path | None = None
    threads: int = 1
    parity_model: ModelShape = field(init=False)
    layout_models: list[ModelShape] = field(init=False)
    bench_models: list[ModelShape] = field(init=False)
    workloads: list[str] = field(init=False)
    check_data: DataSize = field(init=False)
    bench_data: DataSize = field(init=False)
    bench_warmup: int = field(init=False)
    bench_steps: int = field(init=False)
    parity_steps: int = 3
    layout_steps: int = 2
    learning_rate: float = field(init=False)

    def __post_init__(self):
        self.out = Path(self.out)
        tiny = self.tiny
        self.parity_model = _small("qwen2", True) if tiny else QWEN2_100M
        self.layout_models = [_small(f, tiny) for f in ("qwen2", "llama", "gemma3")]
        self.check_data = DataSize(4, 32, 96) if tiny else DataSize(8, 192, 1024)
        self.learning_rate = 1e-3 if tiny else 1e-4
        # Timed benchmark: 2 warm-up + 3 timed steps per variant (tiny: 1 + 2), 16 pairs a step, max_length 2048.
        # On an H200 a 1.5B-shape step (16 pairs, mean 512 tokens a sequence) takes about 1-2 s for B and half
        # that packed, so a (model, workload) row of 7 variants is about 45 s with set-up; see docs/gpu-check.md.
        self.bench_models = [BENCH_TINY] if tiny else [QWEN2_1_5B, QWEN2_0_5B]
        self.bench_data = DataSize(4, 24, 64) if tiny else DataSize(16, 512, 2048)
        self.bench_warmup, self.bench_steps = (1, 2) if tiny else (2, 3)
        self.workloads = list(WORKLOADS)
        if tiny or self.quick:  # one benchmark row: the largest model on the prompt-heavy workload
            self.bench_models, self.workloads = self.bench_models[:1], ["prompt-heavy"]
