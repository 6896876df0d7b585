"""Sampling completion pairs from the behaviour policy μ, and scoring completions under a model.

Online IPO samples both completions from the current policy, μ = π_θ. IPO-MD (Calandriello et al. 2024) samples them
from the token-level geometric mixture of the policy and the reference, normalised at every position::

    μ_λ(y_t | x, y_<t) = π_θ(y_t | ·)^(1−λ) · π_ref(y_t | ·)^λ / Z_t
                       = softmax((1 − λ)·logits_θ + λ·logits_ref)(y_t),        λ ∈ [0, 1]

(log-softmax is shift-invariant per model, so mixing logits or log-probs gives the same distribution). λ = 0 is the
policy, λ = 1 the reference. :func:`sample_completions` draws from μ_λ with one KV cache per model;
:func:`completion_logps` scores given completions with a full forward pass. Both use position ids counted from the
attention mask (left padding does not shift positions), as ``transformers``' ``generate`` does, so a sampled token's
log-prob is the same under sampling and under scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from trl.trainer.utils import selective_log_softmax


def mixture_log_probs(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor | None, mixture_coef: float
) -> torch.Tensor:
    """log μ_λ = log_softmax((1 − λ)·logits_θ + λ·logits_ref) over the last (vocabulary) dimension."""
    if mixture_coef == 0.0 or ref_logits is None:
        if mixture_coef != 0.0:
            raise ValueError(f"mixture_coef={mixture_coef} needs the reference logits")
        return F.log_softmax(policy_logits.float(), dim=-1)
    mixed = (1.0 - mixture_coef) * policy_logits.float() + mixture_coef * ref_logits.float()
    return F.log_softmax(mixed, dim=-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over attended tokens only (0 at the first real token), 0 on padding."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def completion_mask_from_eos(completion_ids: torch.Tensor, eos_token_ids: Sequence[int]) -> torch.Tensor:
    """1 up to and including the first end-of-sequence token of each row, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(list(eos_token_ids), device=completion_ids.device))
    eos_seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    return (~eos_seen_before).long()


@dataclass
class SampledCompletions:
    """Sampled completions: ids (padded after the first EOS), mask (1 on scored tokens, EOS included) and the
    log-prob of every sampled token under the untempered μ_λ (0 where the mask is 0)."""

    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    logps: torch.Tensor


def build_logits_warpers(
    temperature: float = 1.0,
    top_k: int | None = 0,
    top_p: float = 1.0,
    min_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> LogitsProcessorList:
    """The sampling filters of ``transformers.generate``, in its order, applied to the mixture logits."""
    warpers = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        warpers.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    if min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=min_p))
    return warpers


@torch.no_grad()
def sample_completions(
    policy: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    ref_model: torch.nn.Module | None = None,
    mixture_coef: float = 0.0,
    logits_warpers: LogitsProcessorList | None = None,
    generator: torch.Generator | None = None,
    any_rank_unfinished: Callable[[bool], bool] | None = None,
) -> SampledCompletions:
    """Sample one completion per row of ``prompt_ids`` (left-padded) from μ_λ, token by token.

    Every step runs the policy (and, for λ > 0, the reference) on the new token with its KV cache, mixes the logits,
    applies ``logits_warpers`` (temperature, top-k, ...) and draws with ``torch.multinomial`` — for λ = 0 and no
    warpers, the same draws as ``model.generate(do_sample=True)`` from the same random state. Rows that have produced
    an EOS get ``pad_token_id``. ``any_rank_unfinished(local_unfinished)`` lets distributed callers keep every rank
    stepping until all are done (sharded models need the same number of forward calls on every rank).
    """
    if not 0.0 <= mixture_coef <= 1.0:
        raise ValueError(f"mixture_coef must be in [0, 1], got {mixture_coef}")
    if mixture_coef > 0 and ref_model is None:
        raise ValueError("sampling from the mixture (mixture_coef > 0) needs ref_model")
    models = [policy] + ([ref_model] if mixture_coef > 0 else [])
    batch_size = prompt_ids.size(0)
    device = prompt_ids.device
    eos = torch.tensor(list(eos_token_ids), device=device)
    caches = [DynamicCache() for _ in models]
    attention_mask = prompt_mask.long()
    position_ids = position_ids_from_mask(attention_mask)
    step_input = prompt_ids
    sequences = prompt_ids
    unfinished = torch.ones(batch_size, dtype=torch.bool, device=device)
    tokens, logps = [], []

    with _eval_mode(*models):
        for _ in range(max_new_tokens):
            logits = []
            for model, cache in zip(models, caches, strict=True):
                out = model(
                    input_ids=step_input,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    past_key_values=cache,
                    use_cache=True,
                )
                logits.append(out.logits[:, -1, :].float())
            log_mu = mixture_log_probs(logits[0], logits[1] if len(logits) > 1 else None, mixture_coef)
            scores = log_mu if mixture_coef > 0 else logits[0]  # same softmax; raw logits keep generate's draws
            if logits_warpers:
                scores = logits_warpers(sequences, scores)
            next_tokens = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1, generator=generator).squeeze(1)
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
            token_logps = log_mu.gather(-1, next_tokens.unsqueeze(-1)).squeeze(-1)
            tokens.append(next_tokens)
            logps.append(torch.where(unfinished, token_logps, torch.zeros_like(token_logps)))
            unfinished = unfinished & ~torch.isin(next_tokens, eos)

            step_input = next_tokens.unsqueeze(-1)
            sequences = torch.cat([sequences, step_input], dim=-1)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, 1)], dim=-1)
            position_ids = position_ids[:, -1:] + 1
            local_unfinished = bool(unfinished.any())
            if not (any_rank_unfinished(local_unfinished) if any_rank_unfinished else local_unfinished):
                break

    if not tokens:
        empty = prompt_ids.new_zeros(batch_size, 0)
        return SampledCompletions(empty, empty, torch.zeros(batch_size, 0, device=device))
    completion_ids = torch.stack(tokens, dim=1)
    completion_mask = completion_mask_from_eos(completion_ids, eos_token_ids)
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad_token_id)
    return SampledCompletions(completion_ids, completion_mask, torch.stack(logps, dim=1) * completion_mask)


def completion_logps(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    max_length: int | None = None,
) -> torch.Tensor:
    """Per-token log π(y_t | x, y_<t) of the given completions, shape ``(B, T_completion)``, one forward pass.

    If prompt + completion exceed ``max_length``, prompt tokens are dropped from the left (the completion and the
    last prompt token are kept whole). Positions are counted from the attention mask. Values at masked completion
    positions are meaningless; callers mask them.
    """
    if prompt_ids.size(1) == 0:
        raise ValueError("completion_logps needs at least one prompt token to predict the first completion token")
    if max_length is not None:
        excess = max(prompt_ids.size(1) + completion_ids.size(1) - max_length, 0)
        excess = min(excess, prompt_ids.size(1) - 1)  # keep the token that predicts the first completion token
        prompt_ids, prompt_mask = prompt_ids[:, excess:], prompt_mask[:, excess:]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    prompt_len, completion_len = prompt_ids.size(1), completion_ids.size(1)
    logits = outputs.logits[:, prompt_len - 1 : prompt_len - 1 + completion_len]
    return selective_log_softmax(logits, completion_ids)


@contextmanager
def _eval_mode(*models: torch.nn.Module):
    """Eval mode while sampling (no dropout, no gradient checkpointing that would drop the KV cache)."""
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(models, was_training, strict=True):
            m.train(training)
