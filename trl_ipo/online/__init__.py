"""Online IPO and IPO-MD: pairs sampled from the current policy (or its geometric mixture with the reference),
labelled by a judge's preference probability, trained with the offline IPO loss."""

from .config import OnlineIPOConfig
from .judges import JudgeTimeoutError, preference_from_judge, preference_from_rewards
from .sampling import completion_logps, mixture_log_probs, sample_completions
from .trainer import OnlineIPOTrainer

__all__ = [
    "OnlineIPOConfig",
    "OnlineIPOTrainer",
    "JudgeTimeoutError",
    "preference_from_judge",
    "preference_from_rewards",
    "sample_completions",
    "mixture_log_probs",
    "completion_logps",
]
