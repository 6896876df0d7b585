"""Turning a judge's verdicts or two rewards into q = P(y_a ≻ y_b | x), the label the IPO loss regresses on.

IPO needs a preference probability per pair, not a winner (Azar et al. 2023, §5):

* a *judge* ``judge(prompts, completions_a, completions_b) -> list[float]`` returns q directly — a soft probability,
  or a hard verdict 1 / 0 with ½ for a tie;
* *rewards* r_a, r_b (reward functions, reward models) become q either by the Bradley–Terry link::

      q = σ((r_a − r_b) / T)                                       ("bradley_terry")

  or by hard labels, an exact tie being a tie, not a win for a::

      q = 1 if r_a > r_b,  0 if r_a < r_b,  ½ if r_a = r_b          ("hard")

A tie (q = ½) has symmetric target q − ½ = 0: it holds the pair at the reference log-ratio instead of pushing one
completion up (TRL's online DPO labels r_a ≥ r_b as a win for a).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ..errors import InputError

REWARD_TO_PREFERENCE = ("hard", "bradley_terry")

Judge = Callable[[list, list, list], Sequence[float]]


def preference_from_rewards(
    rewards_a: torch.Tensor, rewards_b: torch.Tensor, mode: str = "hard", temperature: float = 1.0
) -> torch.Tensor:
    """q per pair from two rewards: hard labels (exact ties → ½) or Bradley–Terry σ((r_a − r_b)/T)."""
    if mode not in REWARD_TO_PREFERENCE:
        raise ValueError(f"reward_to_preference must be one of {list(REWARD_TO_PREFERENCE)}, got {mode!r}")
    if not temperature > 0:
        raise ValueError(f"the Bradley–Terry temperature must be > 0, got {temperature!r}")
    rewards_a, rewards_b = rewards_a.float(), rewards_b.float()
    for name, rewards in (("a", rewards_a), ("b", rewards_b)):
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"reward of completion {name} is not finite for pair(s) {bad[:10]} (values "
                f"{[rewards[i].item() for i in bad[:10]]}); every reward function returned None/NaN or inf there."
            )
    diff = rewards_a - rewards_b
    if mode == "bradley_terry":
        return torch.sigmoid(diff / temperature)
    return (torch.sign(diff) + 1.0) / 2.0


def preference_from_judge(
    judge: Judge, prompts: list, completions_a: list, completions_b: list, device: torch.device | str | None = None
) -> torch.Tensor:
    """Call ``judge(prompts, completions_a, completions_b)`` and check that it returned one q ∈ [0, 1] per pair."""
    verdicts = judge(prompts, completions_a, completions_b)
    values = judge_values(verdicts, len(prompts))
    for i, q in enumerate(values):
        if not (math.isfinite(q) and 0.0 <= q <= 1.0):
            raise InputError(
                f"the judge returned q={q!r} for pair {i} (prompt {_short(prompts[i])}); "
                "q = P(a ≻ b) must lie in [0, 1]"
            )
    return torch.tensor(values, dtype=torch.float32, device=device)


def judge_values(verdicts, num_pairs: int) -> list[float]:
    """The judge's output as one float per pair, or an error saying what was returned instead.

    Accepted: a list or tuple of real numbers, or a 1-D tensor/array of them, of length ``num_pairs``. Refused by
    name: a mapping (its keys would be read as q), a string, a scalar, a nested or 2-D result, non-numbers.
    """
    if hasattr(verdicts, "detach"):  # torch.Tensor
        verdicts = verdicts.detach().cpu()
    if hasattr(verdicts, "ndim") and hasattr(verdicts, "tolist"):  # torch.Tensor, numpy.ndarray
        if verdicts.ndim != 1:
            raise InputError(
                f"the judge returned a {verdicts.ndim}-D {type(verdicts).__name__} of shape {tuple(verdicts.shape)}; "
                f"it must return one number per pair ({num_pairs} pairs), e.g. a list of floats"
            )
        verdicts = verdicts.tolist()
    if not isinstance(verdicts, (list, tuple)):
        raise InputError(
            f"the judge returned {type(verdicts).__name__} {_short(verdicts)}; it must return a list (or 1-D "
            f"tensor/array) of {num_pairs} numbers, q = P(a ≻ b) per pair"
        )
    for i, value in enumerate(verdicts):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(
                f"the judge returned {type(value).__name__} {_short(value)} for pair {i}; q = P(a ≻ b) must be a "
                "number in [0, 1]"
            )
    if len(verdicts) != num_pairs:
        raise InputError(
            f"the judge returned {len(verdicts)} preferences for {num_pairs} pairs; it must return one per pair"
        )
    return [float(v) for v in verdicts]


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
