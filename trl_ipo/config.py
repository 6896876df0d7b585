"""IPOConfig: TRL's DPOConfig plus the IPO fields, validated when the config is built."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from trl import DPOConfig

from .launch import check_launch, prepare_launch
from .losses import LOGP_REDUCTIONS, LOSS_FORMS

SUPPORTED_LOSS_TYPES = ("ipo", "sft")


@dataclass
class IPOLossArguments:
    """The fields that define the IPO objective, shared by the offline and the online configs.

    Per pair: ``(Δ − t/β)²`` (``paper``) or ``(β·Δ − t)²`` (``scaled``), t = q − ½ (``symmetric``) or t = q, with Δ
    built from per-token-mean or summed log-ratios (``logp_reduction``); see :mod:`trl_ipo.losses`.
    """

    loss_form: str = field(
        default="paper",
        metadata={
            "help": "IPO loss form: 'paper' = (Δ − t/β)² (Azar et al. eq. 17), 'scaled' = (β·Δ − t)² (seed eq. 12, "
            "β² times the paper form). Same minimiser.",
            "choices": list(LOSS_FORMS),
        },
    )
    symmetric: bool = field(
        default=True,
        metadata={
            "help": "Symmetric augmentation: each pair also counts swapped with probability 1 − q, computed "
            "analytically. Target t = q − 1/2 (0.5 for hard labels, 0 for ties). With False, t = q."
        },
    )
    logp_reduction: str = field(
        default="mean",
        metadata={
            "help": "How completion log-probs enter Δ: 'mean' (per-token mean, TRL's IPO convention) or 'sum'.",
            "choices": list(LOGP_REDUCTIONS),
        },
    )

    def _validate_ipo_loss_fields(self) -> None:
        name = type(self).__name__
        if self.loss_form not in LOSS_FORMS:
            raise ValueError(f"{name}.loss_form must be one of {list(LOSS_FORMS)}, got {self.loss_form!r}.")
        if self.logp_reduction not in LOGP_REDUCTIONS:
            raise ValueError(f"{name}.logp_reduction must be one of {list(LOGP_REDUCTIONS)}, got {self.logp_reduction!r}.")
        if isinstance(self.symmetric, str):  # from YAML/CLI strings
            self.symmetric = parse_bool(f"{name}.symmetric", self.symmetric)


@dataclass
class IPOConfig(IPOLossArguments, DPOConfig):
    r"""Configuration for [`IPOTrainer`]: every [`trl.DPOConfig`] field, plus the IPO fields below.

    The per-pair loss is ``(Δ − t/β)²`` (``loss_form="paper"``) where Δ is the log-ratio margin between the chosen
    and rejected completions and t = q − ½ (``symmetric=True``) or t = q (``symmetric=False``), q being the
    probability that the chosen completion is preferred (Azar et al. 2023, eq. 16–17; seed note eq. 10–12).

    Parameters:
        loss_form (`str`, defaults to `"paper"`):
            `"paper"`: (Δ − t/β)²; `"scaled"`: (β·Δ − t)², the seed note's eq. 12 form (β² times the paper form).
        symmetric (`bool`, defaults to `True`):
            Count each pair also swapped with probability 1 − q, computed analytically (no extra forward pass).
            Target t = q − ½ (0.5 for hard labels, 0 for a tie). With `False`, t = q (order as given).
        logp_reduction (`str`, defaults to `"mean"`):
            `"mean"`: per-token mean of the completion log-probs (TRL's IPO convention); `"sum"`: summed log-probs.
        preference_column (`str` or `None`, defaults to `None`):
            Dataset column holding q ∈ [0, 1] per pair (train and eval). `None` means hard labels (q = 1).
        loss_type (`list[str]`, defaults to `["ipo"]`):
            `["ipo"]`, or `["ipo", "sft"]` with `loss_weights` to add TRL's NLL term on the chosen completions.
    """

    loss_type: list[str] = field(
        default_factory=lambda: ["ipo"],
        metadata={
            "help": "Loss terms: ['ipo'] (default) or ['ipo', 'sft'] (add TRL's NLL on chosen, weighted by "
            "`loss_weights`). Other DPO loss types belong to trl's DPOTrainer."
        },
    )
    preference_column: str | None = field(
        default=None,
        metadata={
            "help": "Dataset column holding q in [0, 1], the probability that `chosen` is preferred (soft labels, "
            "ties = 0.5). Default: hard labels (q = 1)."
        },
    )

    allow_resume_without_optimizer: bool = field(
        default=False,
        metadata={
            "help": "Resume from a checkpoint that has no optimizer or scheduler state (e.g. save_only_model=True), "
            "restarting them with a loud warning. By default such a resume stops with an error."
        },
    )

    def __post_init__(self):
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        unknown = [t for t in self.loss_type if t not in SUPPORTED_LOSS_TYPES]
        if unknown or "ipo" not in self.loss_type:
            raise ValueError(
                f"IPOConfig.loss_type={self.loss_type!r}: IPOTrainer supports ['ipo'] or ['ipo', 'sft']. "
                "For other DPO loss types use trl's DPOTrainer."
            )
        if not self.beta > 0:
            raise ValueError(f"IPOConfig.beta must be > 0 (it is the regularisation strength τ), got {self.beta!r}.")
        self._validate_ipo_loss_fields()
        if self.preference_column is not None and not str(self.preference_column).strip():
            raise ValueError("IPOConfig.preference_column must be a column name or None, got an empty string.")
        # Launched CPU ranks distribute for real (gloo) and `deepspeed="zero3"` resolves to the packaged file; this
        # must run before TrainingArguments sets up devices. Then stop if fewer ranks would train than were launched.
        prepare_launch(self)
        super().__post_init__()
        check_launch(self)


def parse_bool(name: str, value: str) -> bool:
    """'true'/'false' (any case), '1'/'0', 'yes'/'no' → bool; anything else is an error naming the field."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def config_values(args, target_cls, skip=()) -> dict:
    """The init fields of config ``args`` that ``target_cls`` also has (for converting e.g. a DPOConfig).

    Reads the attributes directly: ``TrainingArguments.to_dict`` masks every ``*_token`` field with a placeholder.
    """
    import dataclasses

    fields = target_cls.__dataclass_fields__
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(args)
        if f.init and f.name not in skip and f.name in fields and fields[f.name].init
    }


def ipo_setting_names(loss_weights: bool = True) -> tuple[str, ...]:
    """Names of the settings that define an IPO run's objective, in the order model cards and run configs list them.

    β, then the fields of :class:`IPOLossArguments` (the loss form, the target, the log-prob reduction), then
    :class:`IPOConfig`'s source of q (``preference_column``), its loss terms (``loss_type``) and, unless
    ``loss_weights=False``, their weights.
    """
    names = ("beta", *(f.name for f in fields(IPOLossArguments)), "preference_column", "loss_type")
    return (*names, "loss_weights") if loss_weights else names
