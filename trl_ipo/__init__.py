"""trl_ipo: exact IPO (Azar et al. 2023) for Hugging Face TRL.

``from trl_ipo import IPOConfig, IPOTrainer`` is a drop-in for ``from trl import DPOConfig, DPOTrainer``.
"""

from .config import IPOConfig
from .data import (
    add_preference_from_scores,
    add_preference_from_votes,
    preference_from_scores,
    preference_from_votes,
    validate_preference_column,
)
from .losses import ipo_loss
from .trainer import IPOTrainer

__version__ = "0.1.0"

__all__ = [
    "IPOConfig",
    "IPOTrainer",
    "ipo_loss",
    "preference_from_votes",
    "preference_from_scores",
    "add_preference_from_votes",
    "add_preference_from_scores",
    "validate_preference_column",
]
