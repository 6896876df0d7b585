"""The IPO objective as pure tensor math (no trainer state).

Notation (Azar et al. 2023 §5; derivation in docs/theory.md):

* log-ratio of a completion y:  ρ(y) = log π_θ(y|x) − log π_ref(y|x), summed over completion tokens or
  averaged per token (``logp_reduction``);
* margin:  Δ = ρ(y_chosen) − ρ(y_rejected)  (Azar et al.'s h_π; β·Δ is DPO's reward margin, Rafailov et al. 2023 eq. 5);
* q ∈ [0, 1]: probability that the chosen completion is preferred (q = 1 for a hard label, q = ½ for a tie).

Regression target. Without augmentation the pair is regressed in its given order toward the (soft) label,
Azar et al. eq. 16::

    t = q                                  (symmetric=False)

With the symmetric augmentation (docs/theory.md §2) every pair (y₁, y₂, q) also counts swapped as
(y₂, y₁, 1 − q). Its loss is (−Δ − (1 − q)/β)², and

    (Δ − q/β)² + (Δ + (1 − q)/β)² = 2 (Δ − (q − ½)/β)² + 1/(2β²),

so the augmented objective is, up to a constant, the un-augmented one with

    t = q − ½                              (symmetric=True; 0.5 for a hard label, paper eq. 17)

which needs no extra forward pass. A tie (q = ½) then has target 0: the pair is held at the reference ratio.

Loss forms (same minimiser, the scaled one is exactly β² times the paper one)::

    paper:   (Δ − t/β)²        Azar et al. eq. 17 with τ = β
    scaled:  (β·Δ − t)²        regressing the reward margin β·Δ onto t
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .validation import one_of

LOSS_FORMS = ("paper", "scaled")
LOGP_REDUCTIONS = ("mean", "sum")


def ipo_target(
    preference: torch.Tensor | None, symmetric: bool = True, like: torch.Tensor | None = None
) -> torch.Tensor:
    """Regression target t in label units: q − ½ if ``symmetric`` else q (hard labels: q = 1)."""
    if preference is None:
        if like is None:
            raise ValueError("ipo_target needs `preference` or a tensor `like` to take shape from")
        preference = torch.ones_like(like)
    else:
        preference = preference.to(dtype=like.dtype if like is not None else preference.dtype)
        if like is not None:
            preference = preference.to(like.device)
    return preference - 0.5 if symmetric else preference


def ipo_regression(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    preference: torch.Tensor | None = None,
    symmetric: bool = True,
    loss_form: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The regressed quantity and its target, per pair, in the units of ``loss_form``.

    Returns ``(margin, target)`` with the per-pair loss equal to ``(margin − target)²``:
    ``paper`` → (Δ, t/β); ``scaled`` → (β·Δ, t).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    one_of("loss_form", loss_form, LOSS_FORMS)
    delta = chosen_logratios - rejected_logratios
    target = ipo_target(preference, symmetric, like=delta)
    if loss_form == "paper":
        return delta, target / beta
    return beta * delta, target


# The same parameters as ipo_regression, whose squared residual this is: the public one-call form of the loss.
def ipo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    beta: float,
    preference: torch.Tensor | None = None,
    symmetric: bool = True,
    loss_form: str = "paper",
) -> torch.Tensor:
    """Per-pair IPO loss.

    ``paper`` (default): (Δ − t/β)²; ``scaled``: (β·Δ − t)² = β²·(Δ − t/β)², with Δ the log-ratio margin and
    t = q − ½ (``symmetric=True``) or t = q (``symmetric=False``); see the module docstring for the algebra.

    Args:
        chosen_logratios: log π_θ(y_c|x) − log π_ref(y_c|x), shape ``(B,)``, already reduced over tokens.
        rejected_logratios: the same for the rejected completions.
        beta: the regularisation strength β (the paper's τ), > 0.
        preference: q per pair in [0, 1]; ``None`` means hard labels (q = 1).
        symmetric: use the analytic symmetric augmentation (target q − ½) instead of the given order (target q).
        loss_form: ``"paper"`` or ``"scaled"``.
    """
    margin, target = ipo_regression(chosen_logratios, rejected_logratios, beta, preference, symmetric, loss_form)
    return (margin - target) ** 2


def reduce_logps(summed_logps: torch.Tensor, num_tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Turn a per-sequence sum of token log-probs into the sequence log-prob used in Δ.

    ``mean``: Σ_t log p / T (per-token mean over the T scored completion tokens, TRL's IPO convention);
    ``sum``: Σ_t log p (the exact sequence log-likelihood of the paper).
    """
    if one_of("logp_reduction", reduction, LOGP_REDUCTIONS) == "sum":
        return summed_logps
    return summed_logps / num_tokens.to(summed_logps.dtype).clamp(min=1.0)


# ------------------------------------------------------------------------------------------ TRL's loss modifiers
# ``DPOTrainer(loss_type=["ipo"])`` in TRL 1.16 accepts three modifiers of the IPO loss. They are computed here as
# TRL computes them for "ipo", so that a script keeps its numbers after switching to IPOTrainer:
#
# * ``ld_alpha`` (LD-DPO, Liu et al. 2024): the sequence log-prob of each completion counts its first
#   min(len_chosen, len_rejected) tokens in full and the tokens beyond that with weight α (policy and reference);
# * ``f_divergence_type`` (f-DPO, Wang et al. 2023): each summed log-ratio u is replaced by the score f'(e^u)
#   before the per-token reduction, so Δ is a margin of f' scores rather than of log-ratios;
# * ``use_weighting`` (WPO, Zhou et al. 2024, eq. 2): each pair's squared error is multiplied by the detached
#   weight w(y_c)·w(y_r), w(y) = exp(mean over the completion of log π(y_t) − log Σ_v π(v)²).

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")

# exp() of a larger exponent overflows after the cast back (float32/bfloat16 ≈ 88.7, float16 ≈ 11.1, float64 ≈ 709).
_EXP_CAP = {torch.float16: 11.0, torch.bfloat16: 80.0, torch.float32: 80.0}


def sequence_logps(
    per_token_logps: torch.Tensor, completion_mask: torch.Tensor, ld_alpha: float | None = None
) -> torch.Tensor:
    """Per-sequence log-prob of a ``[chosen; rejected]`` batch, optionally length-desensitised (LD-DPO).

    ``per_token_logps`` is zero outside the completion; ``completion_mask`` (same shape, 0/1) marks the completion
    tokens. With ``ld_alpha=None`` this is the plain sum. Otherwise, with s = min(len_chosen, len_rejected) of the
    pair, the first s completion tokens of both sequences count fully and the later ones with weight ``ld_alpha``.
    """
    if ld_alpha is None:
        return per_token_logps.sum(dim=1)
    position = completion_mask.cumsum(dim=1)  # 1, 2, … along the completion, 0 before it
    lengths = completion_mask.sum(dim=1)
    shared = torch.minimum(*lengths.chunk(2, dim=0))
    shared = torch.cat([shared, shared]).unsqueeze(1)
    in_shared = (position > 0) & (position <= shared)
    beyond = position > shared
    return (per_token_logps * in_shared).sum(dim=1) + ld_alpha * (per_token_logps * beyond).sum(dim=1)


def f_divergence_scores(logratios: torch.Tensor, kind: str = "reverse_kl", alpha: float = 0.5) -> torch.Tensor:
    """f'(π/π_ref) of each sequence, from its log-ratio u = log π − log π_ref (f-DPO, Wang et al. 2023).

    ``reverse_kl``: u; ``forward_kl``: 1 − e^(−u); ``js_divergence``: log 2 + log σ(u); ``alpha_divergence``:
    (e^((α−1)·u) − 1)/(α − 1), with u itself at α = 1 and the exponent capped so that exp() stays finite.
    """
    one_of("f_divergence_type", kind, F_DIVERGENCES)
    if kind == "reverse_kl":
        return logratios
    if kind == "forward_kl":
        return 1 - torch.exp(-logratios)
    if kind == "js_divergence":
        return math.log(2) + torch.nn.functional.logsigmoid(logratios)
    if abs(alpha - 1.0) < 1e-6:  # alpha_divergence
        return logratios
    exponent = (alpha - 1.0) * logratios
    exponent = exponent.to(torch.promote_types(exponent.dtype, torch.float32))
    exponent = exponent.clamp(max=_EXP_CAP.get(logratios.dtype, 700.0))
    return (torch.exp(exponent) - 1.0).to(logratios.dtype) * (1.0 / (alpha - 1.0))


def wpo_pair_weights(
    per_token_logps: torch.Tensor, log_sum_sq_probs: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """WPO weight of each pair (Zhou et al. 2024, eq. 2), detached: w(y_chosen)·w(y_rejected).

    w(y) = exp((1/|y|) Σ_t [log π(y_t|·) − log Σ_v π(v|·)²]) over the completion tokens of y: the policy's
    length-normalised probability of y, aligned by the sharpness of each next-token distribution.
    """
    with torch.no_grad():
        aligned = (per_token_logps - log_sum_sq_probs) * completion_mask
        lengths = completion_mask.sum(dim=1).clamp_min(1)
        weights = torch.exp(aligned.sum(dim=1) / lengths)
    chosen, rejected = weights.chunk(2, dim=0)
    return chosen * rejected


# ------------------------------------------------------------------------------------------- the whole objective
@dataclass
class IPOTerms:
    """One batch's objective and the per-pair quantities the metrics report."""

    loss: torch.Tensor  # scalar: Σ_k weight_k · term_k over ``loss_types``
    margin: torch.Tensor  # [B] Δ in the units of ``loss_form`` (β·Δ for "scaled")
    target: torch.Tensor  # [B] t/β ("paper") or t ("scaled")
    weights: torch.Tensor | None  # [B] WPO weights (``use_weighting``), else None
    chosen_logps: torch.Tensor  # [B] policy sequence log-probs (after ``ld_alpha``)
    rejected_logps: torch.Tensor
    chosen_logratios: torch.Tensor  # [B] summed log-ratios (TRL's rewards are β times these)
    rejected_logratios: torch.Tensor


def ipo_objective(
    per_token_logps: torch.Tensor,
    completion_mask: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    settings,
    beta: float,
    preference: torch.Tensor | None = None,
    log_sum_sq_probs: torch.Tensor | None = None,
    loss_types=("ipo",),
    loss_weights=(1.0,),
) -> IPOTerms:
    """The IPO loss of a ``[chosen; rejected]`` batch from per-token log-probs (zero outside the completion).

    ``settings`` carries the IPOConfig loss fields (``symmetric``, ``loss_form``, ``logp_reduction``, ``ld_alpha``,
    ``f_divergence_type``, ``f_alpha_divergence_coef``, ``use_weighting``). Per pair, the "ipo" term is
    ``(Δ − t/β)²`` (Azar et al. 2023 eq. 17, see :func:`ipo_regression`), times the WPO weight with
    ``use_weighting``; the "sft" term is the mean NLL of the chosen completion tokens.
    """
    chosen_logps, rejected_logps = sequence_logps(per_token_logps, completion_mask, settings.ld_alpha).chunk(2)
    chosen_logratios = chosen_logps - ref_chosen_logps
    rejected_logratios = rejected_logps - ref_rejected_logps
    num_chosen, num_rejected = completion_mask.sum(dim=1).chunk(2)
    f_div, f_alpha, reduction = settings.f_divergence_type, settings.f_alpha_divergence_coef, settings.logp_reduction
    chosen_rho = reduce_logps(f_divergence_scores(chosen_logratios, f_div, f_alpha), num_chosen, reduction)
    rejected_rho = reduce_logps(f_divergence_scores(rejected_logratios, f_div, f_alpha), num_rejected, reduction)
    margin, target = ipo_regression(
        chosen_rho, rejected_rho, beta, preference, symmetric=settings.symmetric, loss_form=settings.loss_form
    )
    per_pair = (margin - target) ** 2
    weights = None
    if settings.use_weighting:  # WPO: detached per-pair weights on the IPO term (not on the "sft" term)
        weights = wpo_pair_weights(per_token_logps, log_sum_sq_probs, completion_mask)
        per_pair = per_pair * weights
    loss = 0.0
    for loss_type, weight in zip(loss_types, loss_weights, strict=True):
        if loss_type == "ipo":
            loss = loss + weight * per_pair.mean()
        else:  # "sft": TRL's NLL on the chosen completion tokens
            chosen_mask = completion_mask.chunk(2)[0].bool()
            loss = loss + weight * -per_token_logps.chunk(2)[0][chosen_mask].mean()
    return IPOTerms(loss, margin, target, weights, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios)
