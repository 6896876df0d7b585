"""What IPOTrainer logs: TRL's DPO keys, with TRL's definitions, and the ``ipo/*`` keys of the regressed margin.

The ``ipo/*`` statistics of a batch (Azar et al. 2023 eq. 17: the loss regresses Δ onto the target t/β):

* ``ipo/delta``: mean Δ;  ``ipo/target``: mean target;  ``ipo/residual``: mean (Δ − target);
* ``ipo/sq_error``: mean (Δ − target)², the IPO term of the loss before any WPO weighting;
* ``ipo/wpo_weight``: mean WPO weight (``use_weighting`` only).

:func:`ipo_statistics` is the one place they are computed; the offline and online trainers and the DPO margin
recorder of :mod:`trl_ipo.callbacks` all call it. The key names are defined once, in :mod:`trl_ipo.metric_keys`.
"""

from __future__ import annotations

import torch

from . import _compat
from .metric_keys import DELTA, RESIDUAL, SQ_ERROR, TARGET, WPO_WEIGHT


def ipo_statistics(margin: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> dict:
    """Batch means of the regressed quantities (scalar tensors), keyed by the ``ipo/*`` names."""
    margin, target = margin.detach().float(), target.detach().float()
    residual = margin - target
    stats = {DELTA: margin.mean(), TARGET: target.mean(), RESIDUAL: residual.mean(), SQ_ERROR: (residual**2).mean()}
    if weights is not None:
        stats[WPO_WEIGHT] = weights.detach().float().mean()
    return stats


def log_ipo_metrics(trainer, mode, margin, target, preference, weights=None) -> dict[str, torch.Tensor]:
    """Append the ``ipo/*`` means over all ranks; return the gathered per-pair record for the callbacks."""
    gather = trainer.accelerator.gather
    margin, target = gather(margin.detach()).float(), gather(target.detach()).float()
    weights = gather(weights.detach()) if weights is not None else None
    metrics = _compat.metrics(trainer, mode)
    for key, value in ipo_statistics(margin, target, weights).items():
        metrics[key].append(value.item())
    q = torch.ones_like(margin) if preference is None else gather(preference.to(margin.device)).float()
    return {"delta": margin.cpu(), "target": target.cpu(), "preference": q.cpu()}


def log_trl_metrics(trainer, mode, inputs, outputs, completion_mask, terms) -> None:
    """The metrics stock DPOTrainer logs, with the same keys and definitions (``terms``: losses.IPOTerms)."""
    gather, gather_m = trainer.accelerator.gather, trainer.accelerator.gather_for_metrics
    metrics = _compat.metrics(trainer, mode)
    seq_len = completion_mask.size(1)
    mask = completion_mask.bool()
    chosen_mask, rejected_mask = mask.chunk(2, dim=0)

    entropy_sum = gather_m((outputs.entropy[:, -seq_len:].detach() * mask).sum()).sum()
    total_tokens = gather_m(mask.sum()).sum()
    metrics["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
    if mode == "train":
        _compat.count_train_tokens(trainer, gather_m(inputs["attention_mask"].sum()).sum().item())
    metrics["num_tokens"] = [_compat.train_tokens(trainer)]

    mean_logits = outputs.mean_logits[:, -seq_len:].detach()
    chosen_logits, rejected_logits = mean_logits.chunk(2, dim=0)
    for name, logits, m in (("chosen", chosen_logits, chosen_mask), ("rejected", rejected_logits, rejected_mask)):
        total = gather_m(logits[m].sum()).sum().item()
        count = gather_m(m.sum()).sum().item()
        metrics[f"logits/{name}"].append(total / count if count > 0 else 0.0)

    correct = gather_m((outputs.is_top1[:, -seq_len:].chunk(2, dim=0)[0] & chosen_mask).sum()).sum()
    count = gather_m(chosen_mask.sum()).sum()
    metrics["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)

    chosen_rewards = trainer.beta * terms.chosen_logratios.detach()
    rejected_rewards = trainer.beta * terms.rejected_logratios.detach()
    metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
    metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
    metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
    metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
    metrics["logps/chosen"].append(gather(terms.chosen_logps.detach()).mean().item())
    metrics["logps/rejected"].append(gather(terms.rejected_logps.detach()).mean().item())


def log_aux_loss(trainer, mode, aux_loss) -> None:
    _compat.metrics(trainer, mode)["aux_loss"].append(trainer.accelerator.gather_for_metrics(aux_loss).mean().item())
