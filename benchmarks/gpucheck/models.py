"""The models and data of the check: random-init causal LMs built in memory, the byte tokenizer, synthetic pairs."""

from __future__ import annotations

import copy

from benchmarks.config import BYTE_VOCAB, CHARSET, BenchConfig
from benchmarks.gpucheck.settings import DataSize, ModelShape
from benchmarks.workloads import make_shape_rows


def tokenizer():
    """One token per printable ASCII character (the benchmark's tokenizer): lengths are exact character counts."""
    from trl_ipo.lab.tiny import build_tokenizer

    return build_tokenizer([CHARSET], vocab_size=BYTE_VOCAB)


def build(shape: ModelShape, tok, device: str, seed: int = 0):
    """``shape`` as an fp32 model on ``device``, its weights drawn from ``seed`` (the same on every call)."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        Qwen2Config,
    )

    common = dict(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=shape.tied,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    if shape.family == "qwen2":
        config = Qwen2Config(**common)
    elif shape.family == "llama":
        config = LlamaConfig(**common)
    elif shape.family == "gemma3":  # one sliding-window layer, then one global layer, ...
        layer_types = ["sliding_attention", "full_attention"] * (shape.layers // 2)
        head_dim = shape.hidden // shape.heads
        config = Gemma3TextConfig(  # scores scaled by head_dim^-½ as in the other families (one flex kernel for all)
            **common,
            head_dim=head_dim,
            query_pre_attn_scalar=head_dim,
            sliding_window=shape.sliding_window,
            layer_types=layer_types,
        )
    else:
        raise ValueError(f"unknown model family {shape.family!r}")
    torch.manual_seed(seed)
    with torch.device(device):  # random init where the model will run (fast for the 1.5B shape on a GPU)
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def copies(base, dtype: str, attn: str, perturb: bool = True):
    """(policy, reference): copies of ``base`` in ``dtype`` with attention ``attn``; the policy moved off the
    reference by a fixed pattern, so that Δ ≠ 0 from the first step and every comparison is non-trivial."""
    import torch

    ref = copy.deepcopy(base).to(getattr(torch, dtype))
    policy = copy.deepcopy(base)
    if perturb:
        with torch.no_grad():
            for p in policy.parameters():
                idx = torch.arange(p.numel(), device=p.device, dtype=torch.float32)
                p.add_(0.02 * torch.cos(idx * 0.37).view_as(p))
    policy = policy.to(getattr(torch, dtype))
    for model in (policy, ref):
        model.set_attn_implementation(attn)
    return policy, ref.eval()


def counts(model, shape: ModelShape) -> dict[str, int]:
    """Parameters, and those outside the input embedding with the LM head counted (PaLM's N, tied or not)."""
    total = sum(p.numel() for p in model.parameters())
    head = shape.vocab * shape.hidden
    non_embedding = total - head + (head if shape.tied else 0)
    return {"parameters": total, "non_embedding_parameters": non_embedding}


def workload_config(shape: ModelShape, data: DataSize, warmup: int, steps: int, seed: int = 0) -> BenchConfig:
    """The benchmark package's config for the workload shapes (lengths, FLOP formula) of ``shape`` and ``data``."""
    return BenchConfig(
        hidden=shape.hidden,
        layers=shape.layers,
        heads=shape.heads,
        intermediate=shape.intermediate,
        vocab=shape.vocab,
        seed=seed,
        shape_pairs=data.pairs,
        shape_mean=data.mean,
        shape_max=data.max_length,
        shape_warmup=warmup,
        shape_steps=steps,
    )


def rows(data: DataSize, steps: int, workload: str = "balanced", seed: int = 0) -> list[dict]:
    """``data.pairs · steps`` pairs of log-normal lengths (prompt : completion as ``workload``)."""
    cfg = BenchConfig(seed=seed, shape_pairs=data.pairs, shape_mean=data.mean, shape_max=data.max_length)
    cfg.shape_warmup, cfg.shape_steps = 0, steps
    return make_shape_rows(cfg, workload)[: data.pairs * steps]
