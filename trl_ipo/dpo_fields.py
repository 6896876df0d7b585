"""What each ``trl.DPOConfig`` field does in an IPO run, and the checks that enforce it.

Every field TRL 1.16's ``DPOConfig`` adds to ``TrainingArguments`` has one decision here:

* ``implemented``: it works as in ``trl.DPOTrainer``;
* ``redefined``: it works, with IPO's meaning (``beta`` is the paper's τ, ``loss_type`` is ``["ipo"]``);
* ``refused``: a value other than the default stops the config with an ``InputError`` (a ``ValueError``) that
  says what to change;
* ``ignored``: a value other than the default has no effect on IPO; a ``UserWarning`` names the field once.

:func:`apply_field_decisions` runs them from ``IPOConfig.__post_init__`` (and ``OnlineIPOConfig.__post_init__``,
which only has the ``bf16`` default in common), before ``TrainingArguments`` sets up the device. The table in
docs/usage.md is :func:`decision_table`; ``tests/test_docs.py`` checks that the two agree and that every field of the
installed ``DPOConfig`` has a decision.
"""

from __future__ import annotations

import numbers
import warnings

from .errors import InputError
from .validation import parse_bool

IMPLEMENTED, REDEFINED, REFUSED, IGNORED = "implemented", "redefined", "refused", "ignored (warning)"

BF16_HELP = (
    "bf16 mixed precision. Unset (default): on where the accelerator supports bf16, off on a CPU. True on a machine "
    "without bf16 support is an error."
)

# field -> (decision, what happens in an IPO run). Order follows trl/trainer/dpo_config.py.
DPO_FIELDS: dict[str, tuple[str, str]] = {
    "learning_rate": (IMPLEMENTED, "TRL's default 1e-6."),
    "model_init_kwargs": (IMPLEMENTED, "passed to `from_pretrained` for the policy and the reference."),
    "trust_remote_code": (IMPLEMENTED, "as in TRL."),
    "router_aux_loss_coef": (IMPLEMENTED, "the MoE load-balancing loss is added to the IPO loss."),
    "disable_dropout": (IMPLEMENTED, "as in TRL (dropout off by default in policy and reference)."),
    "dataset_num_proc": (IMPLEMENTED, "as in TRL."),
    "max_length": (IMPLEMENTED, "as in TRL; rows whose prompt alone fills it are dropped with a warning."),
    "truncation_mode": (IMPLEMENTED, "as in TRL (`keep_end` gives TRL's deprecation warning)."),
    "padding_free": (IMPLEMENTED, "sequences are packed without padding."),
    "pad_to_multiple_of": (IMPLEMENTED, "as in TRL."),
    "precompute_ref_log_probs": (IMPLEMENTED, "reference log-probs computed once before training, as in TRL."),
    "precompute_ref_batch_size": (IMPLEMENTED, "as in TRL."),
    "loss_type": (REDEFINED, "`['ipo']` (default) or `['ipo', 'sft']`; any DPO loss type is a `ValueError`."),
    "loss_weights": (IMPLEMENTED, "weights of the `loss_type` terms, e.g. `[1.0, 0.1]` for IPO plus NLL."),
    "ld_alpha": (
        IMPLEMENTED,
        "LD-DPO's length-desensitised log-ratios enter Δ, as in TRL (*Loss modifiers from TRL*).",
    ),
    "f_divergence_type": (
        IMPLEMENTED,
        "Δ is built from f′ scores of the log-ratios, as in TRL (*Loss modifiers from TRL*).",
    ),
    "f_alpha_divergence_coef": (
        IMPLEMENTED,
        "used with `f_divergence_type='alpha_divergence'`; with any other type a non-default value is ignored "
        "with a warning.",
    ),
    "label_smoothing": (
        REFUSED,
        "Robust DPO's and EXO's ε has no place in IPO's loss; express label noise as soft labels q = 1 − ε "
        "(`preference_column`).",
    ),
    "beta": (REDEFINED, "IPO's τ (Azar et al. 2023); must be > 0. The target is t/β (docs/choosing-beta.md)."),
    "use_weighting": (
        IMPLEMENTED,
        "WPO weights multiply each pair's squared error, as in TRL (*Loss modifiers from TRL*).",
    ),
    "discopop_tau": (IGNORED, "DiscoPOP's temperature; IPO has no use for it."),
    "activation_offloading": (IMPLEMENTED, "as in TRL."),
    "sync_ref_model": (
        IMPLEMENTED,
        "TR-IPO (Gorbatovski et al. 2024): the reference is soft-updated during training, as in TRL; refused with "
        "PEFT and with `precompute_ref_log_probs` (docs/theory.md, *When the reference moves*).",
    ),
    "ref_model_mixup_alpha": (
        IMPLEMENTED,
        "α of the update π_ref ← α·π_θ + (1 − α)·π_ref, in [0, 1]; with `sync_ref_model=False` a non-default value "
        "is ignored with a warning.",
    ),
    "ref_model_sync_steps": (
        IMPLEMENTED,
        "optimizer steps between updates, ≥ 1; with `sync_ref_model=False` a non-default value is ignored with a "
        "warning.",
    ),
    "pad_token": (IMPLEMENTED, "deprecated in TRL (its FutureWarning); set `tokenizer.pad_token` instead."),
}

# TrainingArguments fields whose default IPOConfig sets differently from transformers.
TRAINING_DEFAULTS: dict[str, tuple[str, str]] = {
    "bf16": (
        REDEFINED,
        "unset (default): on where the accelerator supports bf16, off on a CPU (`use_cpu=True` or no GPU). "
        "`bf16=True` on a machine without bf16 support is a `ValueError` that says to pass `bf16=False`.",
    ),
    "gradient_checkpointing": (IMPLEMENTED, "TRL's default `True`."),
    "logging_steps": (IMPLEMENTED, "TRL's default 10."),
}


def decision_table() -> str:
    """The Markdown table of docs/usage.md: one row per field, its decision and what happens."""
    rows = ["| field | decision | in an IPO run |", "|---|---|---|"]
    for name, (decision, text) in {**DPO_FIELDS, **TRAINING_DEFAULTS}.items():
        rows.append(f"| `{name}` | {decision} | {text} |")
    return "\n".join(rows)


def bf16_supported(use_cpu: bool) -> bool:
    """Whether transformers would run bf16 mixed precision on this machine without ``use_cpu``.

    The same test ``TrainingArguments`` makes: a bf16-capable GPU (or XLA device) and no ``use_cpu``.
    """
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return not use_cpu and (is_torch_bf16_gpu_available() or is_torch_xla_available())


def resolve_bf16(config) -> None:
    """``bf16=None`` (the default) follows the device; an explicit ``bf16=True`` without support is an error."""
    name = type(config).__name__
    if config.bf16 is None:
        config.bf16 = not config.fp16 and bf16_supported(config.use_cpu)
        return
    if isinstance(config.bf16, str):  # from YAML/CLI strings
        config.bf16 = parse_bool(f"{name}.bf16", config.bf16)
    if config.bf16 and not config.use_cpu and not bf16_supported(False):
        raise InputError(
            f"{name}.bf16=True, but this machine has no GPU with bf16 support. Set bf16=False (`--bf16 false`, "
            "`bf16: false` in a YAML file) to train in float32, or leave bf16 unset: it is then on where the device "
            "supports it and off elsewhere."
        )


def check_sync_ref_model(config) -> None:
    """TR-IPO's settings (``sync_ref_model=True``): α in [0, 1], a period of at least one step, and a reference that
    is computed live (precomputed log-probs would belong to the first reference only)."""
    name = type(config).__name__
    alpha, steps = config.ref_model_mixup_alpha, config.ref_model_sync_steps
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
        raise InputError(
            f"{name}.ref_model_mixup_alpha={alpha!r}: the reference update π_ref ← α·π_θ + (1 − α)·π_ref needs α in "
            "[0, 1] (TR-IPO; 1 copies the policy into the reference)."
        )
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise InputError(
            f"{name}.ref_model_sync_steps={steps!r}: the reference is updated every ref_model_sync_steps optimizer "
            "steps, so it must be an integer >= 1."
        )
    if config.precompute_ref_log_probs:
        raise InputError(
            f"{name}.sync_ref_model=True with precompute_ref_log_probs=True: the reference moves during training, so "
            "log-probs computed before it would be stale after the first update. Set precompute_ref_log_probs=False "
            "or sync_ref_model=False."
        )


def check_sync_ref_model_peft(config, model, peft_config) -> None:
    """``sync_ref_model=True`` needs a reference model of its own: with PEFT the reference is the policy with its
    adapter disabled, which no update can move (trl.DPOTrainer refuses the combination as well)."""
    if not getattr(config, "sync_ref_model", False):
        return
    if peft_config is not None or getattr(model, "peft_config", None):
        raise InputError(
            f"{type(config).__name__}.sync_ref_model=True with a PEFT model: the reference is then the policy with "
            "its adapter disabled, so there is no separate reference to update. Set sync_ref_model=False, or train "
            "all weights (no peft_config)."
        )


def apply_field_decisions(config) -> None:
    """Resolve the ``bf16`` default, then refuse or warn about the ``DPOConfig`` fields IPO does not use."""
    resolve_bf16(config)
    if not hasattr(config, "sync_ref_model"):  # OnlineIPOConfig: not a DPOConfig
        return
    name = type(config).__name__
    if config.label_smoothing:
        raise InputError(
            f"{name}.label_smoothing={config.label_smoothing!r} has no effect on IPO (it is the flip probability ε "
            "of Robust DPO and EXO). Remove it (label_smoothing=0.0); to model label noise, give soft labels "
            "q = 1 − ε in a `preference_column` instead."
        )
    if config.sync_ref_model:
        check_sync_ref_model(config)
    defaults = type(config).__dataclass_fields__
    ignored = {
        "discopop_tau": "it is the temperature of loss_type='discopop'",
    }
    if not config.sync_ref_model:
        for field_name in ("ref_model_mixup_alpha", "ref_model_sync_steps"):
            ignored[field_name] = "it is only read with sync_ref_model=True (TR-IPO)"
    if getattr(config, "f_divergence_type", "reverse_kl") != "alpha_divergence":
        ignored["f_alpha_divergence_coef"] = "it is only read with f_divergence_type='alpha_divergence'"
    for field_name, why in ignored.items():
        value = getattr(config, field_name)
        if value != defaults[field_name].default:
            warnings.warn(
                f"{name}.{field_name}={value!r} is ignored by IPOTrainer: {why}. The run is the same as with the "
                f"default {defaults[field_name].default!r}.",
                UserWarning,
                stacklevel=4,
            )
