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

What a judge or a reward function returns is checked before it becomes a label, and a bad return is one
:class:`~trl_ipo.errors.InputError` line naming the function and what it returned: a wrong count, a string, a
judge that emptied the lists it was given. A reward function may return ``None`` (or NaN) for a completion it does
not score, as in TRL's multi-reward convention, but only where another reward function scored that completion: a
completion that no function scored is an error, not a reward of 0 (TRL's ``nansum`` would make every pair of such
completions a tie, or a win against a negative reward). A judge that does not return within ``judge_timeout``
seconds raises :class:`JudgeTimeoutError`.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable, Sequence

import torch

from ..errors import InputError
from ..validation import one_of

REWARD_TO_PREFERENCE = ("hard", "bradley_terry")

Judge = Callable[[list, list, list], Sequence[float]]


def preference_from_rewards(
    rewards_a: torch.Tensor, rewards_b: torch.Tensor, mode: str = "hard", temperature: float = 1.0
) -> torch.Tensor:
    """q per pair from two rewards: hard labels (exact ties → ½) or Bradley–Terry σ((r_a − r_b)/T)."""
    one_of("reward_to_preference", mode, REWARD_TO_PREFERENCE)
    if not temperature > 0:
        raise ValueError(f"the Bradley–Terry temperature must be > 0, got {temperature!r}")
    rewards_a, rewards_b = rewards_a.float(), rewards_b.float()
    for name, rewards in (("a", rewards_a), ("b", rewards_b)):
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"reward of completion {name} is not finite for pair(s) {bad[:10]} (values "
                f"{[rewards[i].item() for i in bad[:10]]}); a reward (or missing_eos_penalty) is infinite or missing there."
            )
    diff = rewards_a - rewards_b
    if mode == "bradley_terry":
        return torch.sigmoid(diff / temperature)
    return (torch.sign(diff) + 1.0) / 2.0


def preference_from_judge(
    judge: Judge,
    prompts: list,
    completions_a: list,
    completions_b: list,
    device: torch.device | str | None = None,
    timeout: float | None = None,
) -> torch.Tensor:
    """Call ``judge(prompts, completions_a, completions_b)`` and check that it returned one q ∈ [0, 1] per pair.

    The judge gets copies of the three lists, so a judge that empties or edits them changes nothing here; the pair
    count is taken before the call. With ``timeout`` (seconds) the judge runs in a worker thread and
    :class:`JudgeTimeoutError` is raised if it has not returned by then (see :func:`call_with_timeout`).
    """
    name = callable_name(judge)
    num_pairs = len(prompts)
    inputs = (list(prompts), list(completions_a), list(completions_b))
    verdicts = call_with_timeout(judge, inputs, timeout, f"the judge {name}", num_pairs)
    changed = [
        f"{arg} from {num_pairs} to {len(value)} items"
        for arg, value in zip(_JUDGE_ARGS, inputs, strict=True)
        if len(value) != num_pairs
    ]
    try:
        values = judge_values(verdicts, num_pairs, name)
    except InputError as err:
        if changed:
            raise InputError(f"{err}; it also changed its input lists ({', '.join(changed)})") from None
        raise
    for i, q in enumerate(values):
        if not (math.isfinite(q) and 0.0 <= q <= 1.0):
            raise InputError(
                f"the judge {name} returned q={q!r} for pair {i} (prompt {_short(prompts[i])}); "
                "q = P(a ≻ b) must lie in [0, 1]"
            )
    return torch.tensor(values, dtype=torch.float32, device=device)


_JUDGE_ARGS = ("prompts", "completions_a", "completions_b")


class JudgeTimeoutError(TimeoutError):
    """A judge did not return within ``OnlineIPOConfig.judge_timeout`` seconds."""


def call_with_timeout(function, args: tuple, timeout: float | None, what: str, num_pairs: int):
    """``function(*args)``; with ``timeout`` seconds, run in a daemon worker thread and wait at most that long.

    Python cannot stop a thread: on expiry the worker is left running in the background (as a daemon thread it does
    not keep the process alive at exit), and :class:`JudgeTimeoutError` is raised here. An exception raised by the
    function is re-raised here unchanged.
    """
    if timeout is None:
        return function(*args)
    outcome: dict = {}

    def work():
        try:
            outcome["value"] = function(*args)
        except BaseException as err:  # handed to the calling thread
            outcome["error"] = err

    worker = threading.Thread(target=work, name="trl_ipo-judge", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise JudgeTimeoutError(
            f"{what} did not return within judge_timeout={timeout:g} s for {num_pairs} pairs; its thread cannot be "
            "stopped and is left running in the background. Make the judge return sooner (e.g. a timeout on its "
            "own requests) or raise OnlineIPOConfig.judge_timeout."
        )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _as_list(value, who: str, one_d: str, expected: str) -> list:
    """A returned list, tuple or 1-D tensor/array as a list; anything else an :class:`InputError` saying what ``who``
    returned and what it must return (``one_d`` for a tensor of the wrong rank, ``expected`` otherwise)."""
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
    if hasattr(value, "ndim") and hasattr(value, "tolist"):  # torch.Tensor, numpy.ndarray
        if value.ndim != 1:
            raise InputError(
                f"{who} returned a {value.ndim}-D {type(value).__name__} of shape {tuple(value.shape)}; it must "
                f"return {one_d}"
            )
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{who} returned {type(value).__name__} {_short(value)}; it must return {expected}")
    return value


def judge_values(verdicts, num_pairs: int, name: str = "") -> list[float]:
    """The judge's output as one float per pair, or an error saying what was returned instead.

    Accepted: a list or tuple of real numbers, or a 1-D tensor/array of them, of length ``num_pairs``. Refused by
    name: a mapping (its keys would be read as q), a string, a scalar, a nested or 2-D result, non-numbers.
    """
    judge = f"the judge {name}" if name else "the judge"
    verdicts = _as_list(
        verdicts,
        judge,
        f"one number per pair ({num_pairs} pairs), e.g. a list of floats",
        f"a list (or 1-D tensor/array) of {num_pairs} numbers, q = P(a ≻ b) per pair",
    )
    for i, value in enumerate(verdicts):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(
                f"{judge} returned {type(value).__name__} {_short(value)} for pair {i}; q = P(a ≻ b) must be a "
                "number in [0, 1]"
            )
    if len(verdicts) != num_pairs:
        raise InputError(
            f"{judge} returned {len(verdicts)} preferences for {num_pairs} pairs; it must return one per pair"
        )
    return [float(v) for v in verdicts]


def reward_values(name: str, output, num_completions: int) -> list[float]:
    """A custom reward function's output as one float per completion, ``None`` and NaN becoming NaN (not scored).

    Accepted: a list or tuple (or 1-D tensor/array) of ``num_completions`` real numbers or ``None``. Anything else is
    an :class:`InputError` naming the function and what it returned.
    """
    output = _as_list(
        output,
        f"reward function {name}",
        f"one reward per completion ({num_completions} completions)",
        f"a list of {num_completions} rewards (numbers, or None for a completion it does not score)",
    )
    if len(output) != num_completions:
        raise InputError(
            f"reward function {name} returned {len(output)} values for {num_completions} completions "
            f"({_short(list(output))}); it must return one reward (or None) per completion"
        )
    for i, value in enumerate(output):
        if value is not None and not isinstance(value, numbers.Real):
            raise InputError(
                f"reward function {name} returned {type(value).__name__} {_short(value)} for completion {i}; a "
                "reward must be a number, or None for a completion it does not score"
            )
    return [math.nan if value is None else float(value) for value in output]


def combine_rewards(per_function: torch.Tensor, names: Sequence[str], weights: torch.Tensor | None = None):
    """The weighted sum over reward functions of each completion's rewards, skipping the functions that returned
    ``None``/NaN for it (TRL's multi-reward convention).

    ``per_function`` is ``[completions, functions]`` with NaN where a function did not score a completion. A
    completion that no function scored is an :class:`InputError` naming the functions and the completion index.
    """
    unscored = torch.isnan(per_function).all(dim=1).nonzero().flatten().tolist()
    if unscored:
        index = unscored[0]
        num_pairs = per_function.size(0) // 2
        pair, side = (index, "a") if index < num_pairs else (index - num_pairs, "b")
        functions = ", ".join(names)
        raise InputError(
            f"no reward function scored completion {index} (pair {pair}, completion {side}): "
            f"{'reward function' if len(names) == 1 else 'reward functions'} {functions} returned None/NaN for it"
            f"{f' (and for completions {unscored[1:10]})' if len(unscored) > 1 else ''}. None is allowed only "
            "where another reward function scores the completion; a completion with no reward cannot be labelled"
        )
    if weights is not None:
        per_function = per_function * weights.to(per_function.device, per_function.dtype).unsqueeze(0)
    return per_function.nansum(dim=1)


def callable_name(function) -> str:
    """A judge's or reward function's name for messages: ``name`` in backquotes (a class instance: its class)."""
    name = getattr(function, "__name__", None) or type(function).__name__
    return f"`{name}`"


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
