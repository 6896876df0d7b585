"""What a run measures: the variants, targets, workload shapes, :class:`BenchConfig`, its presets and
the validation of a configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

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
SHAPE_FLAGS = {
    "S": dict(prefix_sharing=True),
    "Pf": dict(padding_free=True),
    "SP": dict(prefix_sharing=True, padding_free=True),
}
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


# Whole-number options of the command line (``--scan-warmup`` for ``scan_warmup``), each a BenchConfig field.
INT_OPTIONS = (
    "hidden", "layers", "heads", "intermediate", "vocab", "seq", "pairs", "warmup", "steps",
    "scan_warmup", "scan_steps", "memory_steps", "threads", "seed",
)  # fmt: skip
SHAPE_INT_OPTIONS = ("shape_pairs", "shape_mean", "shape_max", "shape_warmup", "shape_steps", "shape_memory_steps")
# Those that count something and must be at least 1 (warm-up steps may be 0; a seed is any number).
AT_LEAST_ONE = tuple(name for name in INT_OPTIONS if name not in ("warmup", "scan_warmup", "seed"))

PRESETS = {
    "tiny": dict(
        hidden=32,
        layers=2,
        heads=4,
        intermediate=64,
        vocab=512,
        seq=32,
        pairs=2,
        warmup=1,
        steps=2,
        scan_seqs=[32, 64],
        scan_warmup=1,
        scan_steps=1,
        memory_steps=2,
        tiny=True,
        shape_pairs=3,
        shape_mean=24,
        shape_max=64,
        shape_warmup=0,
        shape_steps=2,
    ),
    # Qwen2-0.5B widths (hidden 896, 24 layers, 14 heads, MLP 4864, vocab 151936), untied head, full KV heads.
    "cuda": dict(
        device="cuda",
        dtype="bfloat16",
        hidden=896,
        layers=24,
        heads=14,
        intermediate=4864,
        vocab=151936,
        seq=1024,
        pairs=4,
        warmup=3,
        steps=10,
        scan_seqs=[256, 512, 1024],
        scan_variants=["A", "F"],
        scan_warmup=2,
        scan_steps=5,
        memory_steps=3,
        shape_pairs=8,
        shape_mean=768,
        shape_max=2048,
        shape_warmup=1,
        shape_steps=3,
        shape_memory_steps=1,
    ),
}


def validate_config(cfg: BenchConfig) -> None:
    """Reject a configuration that cannot be measured, naming the offending option, before anything is built."""
    _check_sizes(cfg)
    _check_names(cfg)
    _check_lengths(cfg)
    _check_device(cfg)


def _check_sizes(cfg: BenchConfig) -> None:
    """Counts of at least one, warm-ups of at least zero, a hidden size the heads divide, a big enough vocabulary."""
    for name in AT_LEAST_ONE:
        if getattr(cfg, name) < 1:
            raise SystemExit(f"bench: --{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}.")
    if cfg.warmup < 0 or cfg.scan_warmup < 0:
        raise SystemExit("bench: --warmup and --scan-warmup must be >= 0.")
    if cfg.hidden % cfg.heads:
        raise SystemExit(f"bench: --hidden {cfg.hidden} is not divisible by --heads {cfg.heads}.")
    if cfg.vocab < BYTE_VOCAB:
        raise SystemExit(f"bench: --vocab must be at least {BYTE_VOCAB} (the byte tokenizer's size), got {cfg.vocab}.")


def _check_names(cfg: BenchConfig) -> None:
    """Every variant and shape named is a known one."""
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


def _check_lengths(cfg: BenchConfig) -> None:
    """The shape lengths and every sequence length fit the model's positions."""
    if cfg.only_shapes and not cfg.shapes:
        raise SystemExit("bench: --only-shapes needs --shapes.")
    if cfg.shapes and not 8 <= cfg.shape_mean < cfg.shape_max <= 2048:
        raise SystemExit(f"bench: need 8 <= --shape-mean < --shape-max <= 2048, got {cfg.shape_mean}, {cfg.shape_max}.")
    for seq in [cfg.seq, *cfg.scan_seqs]:
        if not 4 <= seq <= 2048:
            raise SystemExit(f"bench: sequence length {seq} is outside [4, 2048] (the model's positions).")


def _check_device(cfg: BenchConfig) -> None:
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench: --device cuda needs a CUDA device, but torch.cuda.is_available() is False.")
