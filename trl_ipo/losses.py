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

import torch

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
    if loss_form not in LOSS_FORMS:
        raise ValueError(f"loss_form must be one of {LOSS_FORMS}, got {loss_form!r}")
    delta = chosen_logratios - rejected_logratios
    target = ipo_target(preference, symmetric, like=delta)
    if loss_form == "paper":
        return delta, target / beta
    return beta * delta, target


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
    if reduction == "sum":
        return summed_logps
    if reduction == "mean":
        return summed_logps / num_tokens.to(summed_logps.dtype).clamp(min=1.0)
    raise ValueError(f"logp_reduction must be one of {LOGP_REDUCTIONS}, got {reduction!r}")
