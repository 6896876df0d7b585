"""The workload: the benchmark model (its parameters, model FLOPs and saved checkpoint) and the synthetic
data, pairs of equal length for the main table and varied lengths for the workload shapes."""

from __future__ import annotations

import random
from pathlib import Path

from benchmarks.config import BYTE_VOCAB, CHARSET, SHAPE_SIGMA, SHAPES, BenchConfig


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
        tokenizer,
        hidden_size=cfg.hidden,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        seed=cfg.seed,
        vocab_size=cfg.vocab,
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

    def text(k: int) -> str:
        return "".join(rng.choices(CHARSET, k=k))  # one token per character

    # TRL appends EOS to each completion: c - 1 characters make c tokens.
    return [
        {"prompt": text(p), "chosen": text(c - 1), "rejected": text(r - 1)} for p, c, r in shape_lengths(cfg, shape)
    ]


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

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    return {
        "pairs": n,
        "real_tokens": mean(real),
        "padded_tokens": mean(padded),
        "shared_tokens": mean(shared),
        "useful_flops": mean(flops),
    }
