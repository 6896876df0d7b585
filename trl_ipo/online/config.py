"""OnlineIPOConfig: TRL's OnlineDPOConfig with the IPO loss fields, the IPO-MD mixture and the labelling fields."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from trl.import_utils import suppress_experimental_warning

with suppress_experimental_warning():  # a deliberate, pinned dependency (trl 1.16); users need not be warned
    from trl.experimental.online_dpo import OnlineDPOConfig

from ..config import IPOLossArguments
from ..dpo_fields import BF16_HELP, apply_field_decisions
from ..errors import InputError
from ..launch import check_launch, prepare_launch
from ..validation import one_of
from .judges import REWARD_TO_PREFERENCE


@dataclass
class OnlineIPOConfig(IPOLossArguments, OnlineDPOConfig):
    r"""Configuration for [`OnlineIPOTrainer`]: every [`trl.experimental.online_dpo.OnlineDPOConfig`] field, plus the
    fields below.

    Each step samples two completions y_a, y_b per prompt x from the behaviour policy μ — the current policy π_θ
    (``mixture_coef=0``, online IPO) or the normalised token-level geometric mixture π_θ^(1−λ)·π_ref^λ
    (``mixture_coef=λ>0``, IPO-MD) — labels them with q = P(y_a ≻ y_b | x) and minimises the same per-pair loss
    as the offline [`trl_ipo.IPOTrainer`]: ``(Δ − t/β)²`` with Δ the log-ratio margin and t = q − ½
    (``symmetric``) or t = q (Azar et al. 2023 eq. 16–17; Calandriello et al. 2024 for the online form).

    Parameters:
        loss_form (`str`, defaults to `"paper"`):
            `"paper"`: (Δ − t/β)²; `"scaled"`: (β·Δ − t)² (β² times the paper form, same minimiser).
        symmetric (`bool`, defaults to `True`):
            Count each pair also swapped with probability 1 − q (target q − ½, zero for a tie). The two samples are
            exchangeable, so the order-dependent target q (`False`) is only for comparisons.
        logp_reduction (`str`, defaults to `"mean"`):
            `"mean"`: per-token mean of the completion log-probs (the same β as the offline `IPOConfig` default);
            `"sum"`: summed log-probs (TRL `OnlineDPOTrainer(loss_type="ipo")`'s convention).
        mixture_coef (`float`, defaults to `0.0`):
            λ ∈ [0, 1]. 0: sample from π_θ (online IPO). λ > 0: sample token by token from
            softmax((1−λ)·logits_θ + λ·logits_ref) (IPO-MD, Calandriello et al. 2024). Not available with
            `use_vllm`.
        reward_to_preference (`str`, defaults to `"hard"`):
            How rewards r_a, r_b (from `reward_funcs`) become q. `"hard"`: 1 if r_a > r_b, 0 if r_a < r_b, ½ on an
            exact tie. `"bradley_terry"`: q = σ((r_a − r_b)/T). Ignored with a `judge`, which returns q itself.
        bradley_terry_temperature (`float`, defaults to `1.0`):
            T in the Bradley–Terry link above (> 0).
        judge_timeout (`float` or `None`, defaults to `None`):
            Seconds to wait for the `judge` at each step; `None` waits forever. The judge then runs in a worker
            thread, and a judge that has not returned in time stops training with a `JudgeTimeoutError` naming it.
            Python cannot kill a thread: the worker is left running in the background (a daemon thread, so it does
            not keep the process alive at exit).
        temperature (`float`, defaults to `1.0`):
            Sampling temperature. 1 samples on-policy (TRL's online DPO defaults to 0.9).
        loss_type (`str`, defaults to `"ipo"`):
            Only `"ipo"`; other losses belong to trl's `OnlineDPOTrainer`.
    """

    loss_type: str = field(
        default="ipo",
        metadata={"help": "Only 'ipo'. Other loss types belong to trl's OnlineDPOTrainer.", "choices": ["ipo"]},
    )
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature; 1 (default) samples on-policy."},
    )
    mixture_coef: float = field(
        default=0.0,
        metadata={
            "help": "λ in [0, 1]: 0 samples from the policy (online IPO); λ > 0 samples from the normalised "
            "token-level geometric mixture π_θ^(1−λ)·π_ref^λ (IPO-MD)."
        },
    )
    reward_to_preference: str = field(
        default="hard",
        metadata={
            "help": "Rewards → q: 'hard' (1/0, exact ties 1/2) or 'bradley_terry' (σ((r_a − r_b)/T)).",
            "choices": list(REWARD_TO_PREFERENCE),
        },
    )
    bradley_terry_temperature: float = field(
        default=1.0,
        metadata={"help": "T in q = σ((r_a − r_b)/T) when reward_to_preference='bradley_terry'."},
    )

    judge_timeout: float | None = field(
        default=None,
        metadata={
            "help": "Seconds to wait for the judge at each step (None: no limit). On expiry training stops with a "
            "JudgeTimeoutError; the judge's worker thread cannot be killed and is left running in the background."
        },
    )

    def __post_init__(self):
        if self.loss_type != "ipo":
            raise ValueError(
                f"OnlineIPOConfig.loss_type={self.loss_type!r}: OnlineIPOTrainer trains IPO only. For other losses "
                "use trl.experimental.online_dpo.OnlineDPOTrainer."
            )
        self._validate_ipo_loss_fields()
        if not 0.0 <= float(self.mixture_coef) <= 1.0:
            raise ValueError(
                f"OnlineIPOConfig.mixture_coef (λ) must be in [0, 1] (0 = online IPO, λ > 0 = IPO-MD), "
                f"got {self.mixture_coef!r}."
            )
        one_of("OnlineIPOConfig.reward_to_preference", self.reward_to_preference, REWARD_TO_PREFERENCE)
        if not self.bradley_terry_temperature > 0:
            raise ValueError(
                f"OnlineIPOConfig.bradley_terry_temperature must be > 0, got {self.bradley_terry_temperature!r}."
            )
        if self.judge_timeout is not None:
            timeout = self.judge_timeout
            if isinstance(timeout, str):  # from YAML/CLI strings
                try:
                    timeout = float(timeout)
                except ValueError:
                    timeout = self.judge_timeout
            if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout < math.inf:
                raise InputError(
                    f"OnlineIPOConfig.judge_timeout must be a number of seconds > 0, or None for no limit; got "
                    f"{self.judge_timeout!r}."
                )
            self.judge_timeout = float(timeout)
        if not self.temperature > 0:
            raise ValueError(f"OnlineIPOConfig.temperature must be > 0, got {self.temperature!r}.")
        if self.use_vllm and self.mixture_coef > 0:
            raise ValueError(
                f"OnlineIPOConfig.use_vllm=True with mixture_coef={self.mixture_coef}: vLLM samples from the policy "
                "only. IPO-MD (mixture_coef > 0) samples with transformers; set use_vllm=False."
            )
        betas = self.beta if isinstance(self.beta, (list, tuple)) else [self.beta]
        if not betas or not all(isinstance(b, (int, float)) and b > 0 for b in betas):
            raise ValueError(
                f"OnlineIPOConfig.beta must be > 0 (it is the regularisation strength τ), got {self.beta!r}."
            )
        # Launched CPU ranks distribute for real (gloo) and `deepspeed="zero3"` resolves to the packaged file; this
        # must run before TrainingArguments sets up devices. Then stop if fewer ranks would train than were launched.
        prepare_launch(self)
        apply_field_decisions(self)  # bf16 follows the device
        super().__post_init__()
        check_launch(self)
        if self.eval_strategy != "no":
            raise ValueError(
                f"OnlineIPOConfig.eval_strategy={str(self.eval_strategy)!r}: OnlineIPOTrainer has no evaluation loop "
                "(each step samples fresh pairs). Set eval_strategy='no' and evaluate the saved policy separately."
            )
