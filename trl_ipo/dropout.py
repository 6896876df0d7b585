"""Switching off every dropout of a model, including the functional dropout that ``nn.Dropout`` modules do not cover.

IPO's margin Δ = ρ(y_w) − ρ(y_l) compares the policy with the reference (Azar et al. 2023, eq. 17). With
``disable_dropout=True`` both must be deterministic: at step 0 the policy *is* the reference, so Δ = 0 and the loss is
exactly (0 − t/β)². TRL's ``disable_dropout_in_model`` sets ``p = 0`` on ``nn.Dropout`` modules only. Some
architectures keep the probability as a float attribute and call ``nn.functional.dropout(x, p=self.dropout, …)``
(OPT: ``dropout``, ``activation_dropout``, ``layerdrop``; GPT-BigCode: ``attn_pdrop``, ``resid_pdrop``,
``embd_pdrop``), so policy and reference draw different masks and Δ ≠ 0 at step 0. :func:`disable_dropout` zeroes
those attributes and the matching fields of the model's configuration (which the saved ``config.json`` then
records as 0).
"""

from __future__ import annotations

import re

from torch import nn

# Attribute names that hold a dropout probability (or a layer-drop rate): ``dropout``, ``attention_dropout``,
# ``hidden_dropout_prob``, ``classifier_dropout``, ``dropout_rate``, ``attn_pdrop``, ``layerdrop``, ...
_DROPOUT_NAME = re.compile(r"(dropout|dropout_prob|dropout_rate|pdrop|p_drop|layerdrop|layer_drop)$", re.IGNORECASE)


def is_dropout_name(name: str) -> bool:
    """Whether an attribute called ``name`` holds a dropout probability."""
    return bool(_DROPOUT_NAME.search(name))


def _zero_floats(obj) -> list[str]:
    zeroed = []
    for name, value in list(vars(obj).items()):
        if isinstance(value, float) and not isinstance(value, bool) and value != 0.0 and is_dropout_name(name):
            setattr(obj, name, 0.0)
            zeroed.append(name)
    return zeroed


def _zero_config(config, seen: set[int]) -> None:
    """Zero the dropout fields of a ``PretrainedConfig`` and of its sub-configurations (``text_config``, …)."""
    from transformers import PretrainedConfig

    if not isinstance(config, PretrainedConfig) or id(config) in seen:
        return
    seen.add(id(config))
    _zero_floats(config)
    for value in list(vars(config).values()):
        _zero_config(value, seen)


def disable_dropout(*models) -> None:
    """Make every model of ``models`` (``None`` entries skipped) free of dropout.

    Sets ``p = 0`` on every ``nn.Dropout`` module, zeroes every float dropout attribute of every module (what
    ``nn.functional.dropout`` is called with) and the dropout fields of each module's configuration.
    """
    seen: set[int] = set()
    for model in models:
        if model is None:
            continue
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            _zero_floats(module)
            _zero_config(getattr(module, "config", None), seen)


def disable_dropout_if_asked(args, *models) -> None:
    """:func:`disable_dropout` on ``models`` when ``args.disable_dropout`` is set (the trainer's one call)."""
    if getattr(args, "disable_dropout", False):
        disable_dropout(*models)
