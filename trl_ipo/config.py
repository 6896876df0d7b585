"""IPOConfig: TRL's DPOConfig plus the IPO fields, validated when the config is built."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields

from trl import DPOConfig

from .dpo_fields import BF16_HELP, apply_field_decisions
from .errors import InputError
from .launch import check_launch, prepare_launch
from .losses import LOGP_REDUCTIONS, LOSS_FORMS
from .redact import redact, redact_state
from .validation import one_of, parse_bool

SUPPORTED_LOSS_TYPES = ("ipo", "sft")
# Real-valued IPO fields stored as float once validated (a scalar, or a list of them: per-epoch β, loss weights).
REAL_FIELDS = ("beta", "loss_weights", "mixture_coef", "temperature", "bradley_terry_temperature")


@dataclass
class IPOLossArguments:
    """The fields that define the IPO objective, shared by the offline and the online configs.

    Per pair: ``(Δ − t/β)²`` (``paper``) or ``(β·Δ − t)²`` (``scaled``), t = q − ½ (``symmetric``) or t = q, with Δ
    built from per-token-mean or summed log-ratios (``logp_reduction``); see :mod:`trl_ipo.losses`.
    """

    loss_form: str = field(
        default="paper",
        metadata={
            "help": "IPO loss form: 'paper' = (Δ − t/β)² (Azar et al. 2023, eq. 17), 'scaled' = (β·Δ − t)² "
            "(β² times the paper form). Same minimiser.",
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
            "help": "How completion log-probs enter Δ: 'mean' (per-token mean, TRL's IPO convention; the default of "
            "`trl-ipo train` and `trl-ipo compare`) or 'sum'. The same β sets a different target under each.",
            "choices": list(LOGP_REDUCTIONS),
        },
    )

    # Credentials never leave the process in a pickle: ``Trainer`` saves ``torch.save(args)`` as
    # ``training_args.bin`` with every checkpoint. Pickling goes through ``__getstate__``, which blanks ``hub_token``
    # and masks secret-named entries at any depth (``model_init_kwargs={"token": ...}``, see trl_ipo.redact).
    # ``copy.copy``/``copy.deepcopy`` would use ``__getstate__`` too, so they are defined to keep every value: a copy
    # made inside the process (TRL copies its arguments) still pushes to the hub with the token. Defined here, so that the offline
    # and the online config (both built on these fields) behave alike.
    def __getstate__(self):
        return redact_state(self.__dict__)

    def __copy__(self):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo):
        import copy

        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    def to_dict(self):
        """``TrainingArguments.to_dict`` (``*_token`` fields masked) with secret-named entries masked at any depth:
        what ``training_args.json`` and the wandb run config record."""
        return redact(super().to_dict())

    def _validate_ipo_loss_fields(self) -> None:
        name = type(self).__name__
        if isinstance(self.symmetric, str):  # from YAML/CLI strings
            self.symmetric = parse_bool(f"{name}.symmetric", self.symmetric)
        for field_name in REAL_FIELDS:  # Fraction(1, 10), numpy scalars, Python ints → float
            if hasattr(self, field_name):
                setattr(self, field_name, as_float(getattr(self, field_name)))
        check_ipo_loss_values(self, name)


@dataclass
class IPOConfig(IPOLossArguments, DPOConfig):
    r"""Configuration for [`IPOTrainer`]: every [`trl.DPOConfig`] field, plus the IPO fields below.

    The per-pair loss is ``(Δ − t/β)²`` (``loss_form="paper"``) where Δ is the log-ratio margin between the chosen
    and rejected completions and t = q − ½ (``symmetric=True``) or t = q (``symmetric=False``), q being the
    probability that the chosen completion is preferred (Azar et al. 2023, eq. 16–17).

    Parameters:
        loss_form (`str`, defaults to `"paper"`):
            `"paper"`: (Δ − t/β)²; `"scaled"`: (β·Δ − t)², β² times the paper form (same minimiser).
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
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
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

    prefix_sharing: bool = field(
        default=False,
        metadata={
            "help": "Lay each pair out as one sequence [prompt, chosen, rejected]: the prompt is computed once for "
            "the policy and the reference, the rejected branch never sees the chosen one (docs/performance.md). "
            "Combines with `padding_free`, which IPOTrainer honours (rows packed without padding)."
        },
    )

    def __post_init__(self):
        self._validate_packing_fields()
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        self.loss_weights = as_float(self.loss_weights)
        check_ipo_config_values(self)
        self._validate_ipo_loss_fields()
        # Launched CPU ranks distribute for real (gloo) and `deepspeed="zero3"` resolves to the packaged file; this
        # must run before TrainingArguments sets up devices. Then stop if fewer ranks would train than were launched.
        prepare_launch(self)
        apply_field_decisions(self)  # bf16 follows the device; DPOConfig fields unused by IPO: error or warning
        super().__post_init__()
        check_launch(self)

    def _validate_packing_fields(self) -> None:
        for name in ("prefix_sharing", "padding_free"):
            if isinstance(getattr(self, name), str):  # from YAML/CLI strings
                setattr(self, name, parse_bool(f"IPOConfig.{name}", getattr(self, name)))


# ------------------------------------------------------------------------------------------------ value checks
def as_float(value):
    """A real number that is not a bool or a float (``Fraction(1, 10)``, ``numpy.float32``, ``2``) as a float; each
    element of a list or tuple likewise. Anything else is returned unchanged for the checks to judge.

    ``Fraction`` passes every check of a real number but cannot divide a tensor, so training would fail at its first
    step; the conversion happens when the config is built instead.
    """
    if isinstance(value, (list, tuple)):
        return type(value)(as_float(v) for v in value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, float)):
        try:
            return float(value)
        except (OverflowError, ValueError):
            return value
    return value


def _described(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_beta(name: str, beta, per_epoch_list: bool = False) -> None:
    """β (or, with ``per_epoch_list``, each β of a list) is a finite real number > 0; bools and strings are refused.

    A non-finite β trains with zero loss and zero gradient (the target t/β vanishes and (β·Δ − t)² overflows).
    """
    values = beta if per_epoch_list and isinstance(beta, (list, tuple)) else [beta]
    if not values:
        raise InputError(f"{name}.beta must be a number > 0, got an empty list.")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(
                f"{name}.beta must be a number > 0 (the regularisation strength τ), got {_described(value)}."
            )
        if not math.isfinite(value):
            raise InputError(f"{name}.beta must be a finite number > 0 (the regularisation strength τ), got {value!r}.")
        if not value > 0:
            raise InputError(f"{name}.beta must be > 0 (it is the regularisation strength τ), got {value!r}.")


def check_ipo_loss_values(config, name: str) -> None:
    """Type and range of the fields every IPO config shares (offline and online); errors name the field."""
    for field_name, choices in (("loss_form", LOSS_FORMS), ("logp_reduction", LOGP_REDUCTIONS)):
        one_of(f"{name}.{field_name}", getattr(config, field_name), choices)
    if not isinstance(config.symmetric, bool):
        raise InputError(f"{name}.symmetric must be true or false, got {_described(config.symmetric)}.")
    online = not isinstance(config, DPOConfig)
    check_beta(name, config.beta, per_epoch_list=online)  # online: one β per epoch
    if online:
        check_real(name, "mixture_coef", config.mixture_coef)  # its range [0, 1] is checked by OnlineIPOConfig
        check_real(name, "temperature", config.temperature, low=0.0, low_open=True)
        check_real(name, "bradley_terry_temperature", config.bradley_terry_temperature, low=0.0, low_open=True)


def check_real(name: str, field_name: str, value, low=None, high=None, low_open: bool = False) -> None:
    """``value`` is a finite real number (not a bool or a string) within [low, high] (``(low, …`` if ``low_open``)."""
    interval = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}"
    interval = f" in {interval}{']' if high is not None else ')'}" if (low, high) != (None, None) else ""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    outside = number and (
        not math.isfinite(value)
        or (low is not None and (value <= low if low_open else value < low))
        or (high is not None and value > high)
    )
    if not number or outside:
        raise InputError(f"{name}.{field_name} must be a finite number{interval}, got {_described(value)}.")


def check_ipo_config_values(config) -> None:
    """The fields only the offline :class:`IPOConfig` has: ``loss_type``, ``loss_weights``, ``preference_column``."""
    loss_type = config.loss_type
    if not isinstance(loss_type, (list, tuple)) or not all(isinstance(t, str) for t in loss_type):
        raise InputError(f"IPOConfig.loss_type must be a list of names, got {_described(loss_type)}.")
    unknown = [t for t in loss_type if t not in SUPPORTED_LOSS_TYPES]
    if unknown or "ipo" not in loss_type:
        raise InputError(
            f"IPOConfig.loss_type={list(loss_type)!r}: IPOTrainer supports ['ipo'] or ['ipo', 'sft']. "
            "For other DPO loss types use trl's DPOTrainer."
        )
    repeated = sorted({t for t in loss_type if loss_type.count(t) > 1})
    if repeated:  # each term would be added twice
        raise InputError(
            f"IPOConfig.loss_type={list(loss_type)!r} names {repeated} more than once; list each term once."
        )
    weights = config.loss_weights
    if weights is not None:
        if not isinstance(weights, (list, tuple)) or len(weights) != len(loss_type):
            raise InputError(
                f"IPOConfig.loss_weights must be a list of {len(loss_type)} number(s), one per loss_type "
                f"{list(loss_type)!r}, got {_described(weights)}."
            )
        for term, weight in zip(loss_type, weights, strict=True):
            number = isinstance(weight, numbers.Real) and not isinstance(weight, bool)
            if not number or not math.isfinite(weight) or weight < 0:
                raise InputError(
                    f"IPOConfig.loss_weights: the weight of {term!r} must be a finite number >= 0, "
                    f"got {_described(weight)}."
                )
    column = config.preference_column
    if column is not None and (not isinstance(column, str) or not column.strip()):
        raise InputError(f"IPOConfig.preference_column must be a column name or None, got {_described(column)}.")


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


def move_hub_token_to_env(args) -> bool:
    """Blank ``args.hub_token`` so that ``Trainer`` does not pickle it into ``training_args.bin``.

    ``Trainer`` saves the whole ``TrainingArguments`` object, ``hub_token`` included, with every checkpoint and at the
    end of training. The token is moved to the ``HF_TOKEN`` environment variable of this process (unless one is
    already set), where ``huggingface_hub`` finds it for ``push_to_hub``. Returns whether a token was moved.
    """
    import os

    token = getattr(args, "hub_token", None)
    if not token:
        return False
    os.environ.setdefault("HF_TOKEN", token)
    args.hub_token = None
    return True


def default_output_dir(model, suffix: str) -> str:
    """``<model name>-<suffix>``, TRL's default output folder for a trainer built without ``args``."""
    name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
    return f"{str(name).rstrip('/').split('/')[-1]}-{suffix}"
