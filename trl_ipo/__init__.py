"""trl_ipo: exact IPO (Azar et al. 2023) for Hugging Face TRL.

``from trl_ipo import IPOConfig, IPOTrainer`` is a drop-in for ``from trl import DPOConfig, DPOTrainer``.
Names are imported on first use, so ``trl-ipo --help`` and the pure-math modules do not pay for importing TRL.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "IPOConfig": "trl_ipo.config",
    "IPOTrainer": "trl_ipo.trainer",
    "ipo_loss": "trl_ipo.losses",
    "preference_from_votes": "trl_ipo.data",
    "preference_from_scores": "trl_ipo.data",
    "add_preference_from_votes": "trl_ipo.data",
    "add_preference_from_scores": "trl_ipo.data",
    "validate_preference_column": "trl_ipo.data",
    "IPOMarginCallback": "trl_ipo.callbacks",
    "InputError": "trl_ipo.errors",
    "OnlineIPOConfig": "trl_ipo.online",
    "OnlineIPOTrainer": "trl_ipo.online",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trl_ipo' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
