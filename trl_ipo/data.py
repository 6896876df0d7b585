"""Preference columns: validation with precise errors, and turning votes or scores into q.

q is the probability that the ``chosen`` completion is preferred over ``rejected`` (seed note eq. 8a: q ∈ [0, 1];
q = ½ is a tie). Two common sources:

* annotator votes:   q = wins / (wins + losses)
* scalar scores:     q = σ((s_chosen − s_rejected) / T)    (Bradley–Terry, seed note §2.1)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

__all__ = [
    "check_preference_value",
    "validate_preference_column",
    "preference_from_votes",
    "preference_from_scores",
    "add_preference_from_votes",
    "add_preference_from_scores",
    "PreferenceCollator",
]


def check_preference_value(value: Any, where: str) -> float:
    """Return ``value`` as a float in [0, 1] or raise a ValueError naming ``where`` (column and row) and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Preference value must be a number in [0, 1]; got {value!r} ({type(value).__name__}) at {where}.")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"Preference value is NaN at {where}; q must be a number in [0, 1].")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Preference value {value!r} at {where} is outside [0, 1].")
    return value


def validate_preference_column(dataset, column: str, split: str = "train") -> None:
    """Check that ``dataset`` has ``column`` and that every row holds a number in [0, 1].

    Works on a ``datasets.Dataset`` (or anything with ``column_names`` and column access). Iterable datasets are
    checked lazily, batch by batch, by :class:`PreferenceCollator`.
    """
    names = getattr(dataset, "column_names", None)
    if names is None:  # IterableDataset without known features: checked in the collator
        return
    if column not in names:
        raise ValueError(
            f"preference_column={column!r} is not a column of the {split} dataset; its columns are {sorted(names)}."
        )
    for row, value in enumerate(dataset[column]):
        check_preference_value(value, f"column {column!r}, row {row} of the {split} dataset")


def preference_from_votes(wins, losses) -> torch.Tensor:
    """q = wins / (wins + losses) per pair; a pair with no votes is an error (it carries no label)."""
    wins = torch.as_tensor(wins, dtype=torch.float64)
    losses = torch.as_tensor(losses, dtype=torch.float64)
    if (wins < 0).any() or (losses < 0).any():
        raise ValueError("Vote counts must be non-negative.")
    total = wins + losses
    if (total == 0).any():
        row = int(torch.nonzero(total == 0)[0])
        raise ValueError(f"Row {row} has no votes (wins + losses = 0), so its preference is undefined.")
    return wins / total


def preference_from_scores(chosen_scores, rejected_scores, temperature: float = 1.0) -> torch.Tensor:
    """Bradley–Terry: q = σ((s_chosen − s_rejected) / T)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    chosen_scores = torch.as_tensor(chosen_scores, dtype=torch.float64)
    rejected_scores = torch.as_tensor(rejected_scores, dtype=torch.float64)
    return torch.sigmoid((chosen_scores - rejected_scores) / temperature)


def _require_columns(dataset, columns):
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"Columns {missing} are not in the dataset; its columns are {sorted(dataset.column_names)}.")


def add_preference_from_votes(dataset, wins_column: str, losses_column: str, output_column: str = "preference"):
    """Return ``dataset`` with ``output_column`` = wins / (wins + losses)."""
    _require_columns(dataset, [wins_column, losses_column])
    q = preference_from_votes(dataset[wins_column], dataset[losses_column]).tolist()
    return dataset.add_column(output_column, q)


def add_preference_from_scores(
    dataset, chosen_score_column: str, rejected_score_column: str, temperature: float = 1.0, output_column: str = "preference"
):
    """Return ``dataset`` with ``output_column`` = σ((s_chosen − s_rejected)/T)."""
    _require_columns(dataset, [chosen_score_column, rejected_score_column])
    q = preference_from_scores(dataset[chosen_score_column], dataset[rejected_score_column], temperature).tolist()
    return dataset.add_column(output_column, q)


class PreferenceCollator:
    """Wrap a preference collator (TRL's ``DataCollatorForPreference`` by default) to carry q per pair.

    The wrapped collator builds the usual ``[chosen; rejected]`` batch; this adds ``batch["preference"]``, a float
    tensor of shape ``(B,)`` read from ``column`` of each example.
    """

    key = "preference"

    def __init__(self, collator, column: str, split: str = "train"):
        self.collator = collator
        self.column = column
        self.split = split

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if examples and self.column not in examples[0]:
            raise ValueError(
                f"preference_column={self.column!r} is missing from the batch; example keys are {sorted(examples[0])}."
            )
        values = [
            check_preference_value(ex[self.column], f"column {self.column!r}, example {i} of a {self.split} batch")
            for i, ex in enumerate(examples)
        ]
        batch[self.key] = torch.tensor(values, dtype=torch.float32)
        return batch
