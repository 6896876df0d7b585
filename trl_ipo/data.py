"""Preference columns: validation with precise errors, and turning votes or scores into q.

q is the probability that the ``chosen`` completion is preferred over ``rejected`` (the preference probability
p*(y ≻ y′ | x) of Azar et al. 2023: q ∈ [0, 1]; q = ½ is a tie). Two common sources:

* annotator votes:   q = wins / (wins + losses)
* scalar scores:     q = σ((s_chosen − s_rejected) / T)    (Bradley–Terry, as in Rafailov et al. 2023, eq. 1)
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import torch

from .errors import InputError

__all__ = [
    "check_preference_value",
    "validate_preference_column",
    "validate_preference_rows",
    "RowChecker",
    "preference_from_votes",
    "preference_from_scores",
    "add_preference_from_votes",
    "add_preference_from_scores",
    "PreferenceCollator",
    "UnusedPreferenceColumnWarning",
    "warn_unused_preference_columns",
]

# Column names that usually hold q, a soft label (compared case-insensitively).
SOFT_LABEL_NAMES = frozenset(
    {
        "q",
        "preference",
        "preferences",
        "pref",
        "soft_label",
        "soft_labels",
        "label_prob",
        "label_probability",
        "preference_prob",
        "preference_probability",
        "p_chosen",
        "prob_chosen",
        "chosen_prob",
        "chosen_probability",
    }
)
_warned_columns: set[str] = set()


class UnusedPreferenceColumnWarning(UserWarning):
    """A numeric column named like a soft label is present but ``preference_column`` is unset."""


def warn_unused_preference_columns(numeric_columns, preference_column: str | None) -> list[str]:
    """Warn, once per column name and process, about soft-label-looking numeric columns that are not used.

    With ``preference_column=None`` every pair is a hard label (q = 1), so a ``q`` or ``preference`` column in the
    data is silently ignored. ``numeric_columns`` are the names of the numeric columns; returns those warned about.
    """
    if preference_column is not None:
        return []
    found = [c for c in numeric_columns if isinstance(c, str) and c.lower() in SOFT_LABEL_NAMES]
    fresh = [c for c in found if c not in _warned_columns]
    for column in fresh:
        _warned_columns.add(column)
        warnings.warn(
            f"the dataset has a numeric column {column!r} that looks like soft labels (q), but "
            f"preference_column is not set, so every pair trains as a hard label (q = 1) and {column!r} is ignored. "
            f"Set preference_column={column!r} (--preference_column {column}) to train on it.",
            UnusedPreferenceColumnWarning,
            stacklevel=3,
        )
    return fresh


def _numeric_features(dataset) -> list[str]:
    features = getattr(dataset, "features", None) or {}
    return [
        name
        for name, feature in features.items()
        if str(getattr(feature, "dtype", "")).startswith(("float", "int", "uint"))
    ]


def check_preference_value(value: Any, where: str) -> float:
    """Return ``value`` as a float in [0, 1] or raise an InputError naming ``where`` (column and row) and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(
            f"Preference value must be a number in [0, 1]; got {value!r} ({type(value).__name__}) at {where}."
        )
    value = float(value)
    if math.isnan(value):
        raise InputError(f"Preference value is NaN at {where}; q must be a number in [0, 1].")
    if not 0.0 <= value <= 1.0:
        raise InputError(f"Preference value {value!r} at {where} is outside [0, 1].")
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
        raise InputError(
            f"preference_column={column!r} is not a column of the {split} dataset; its columns are {sorted(names)}."
        )
    for row, value in enumerate(dataset[column]):
        check_preference_value(value, f"column {column!r}, row {row} of the {split} dataset")


# ------------------------------------------------------------------------------------------------- row checks
TEXT_COLUMNS = ("prompt", "chosen", "rejected")
COMPLETION_COLUMNS = ("chosen", "rejected")
MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool")


def _value_kind(value, where: str) -> str:
    """``"plain"`` for text, ``"conversational"`` for a valid list of chat messages; anything else is an error."""
    if isinstance(value, str):
        return "plain"
    if not isinstance(value, list):
        raise InputError(
            f"{where} holds {type(value).__name__} {_short(value)}; expected text or a list of chat messages "
            "({'role': ..., 'content': ...})."
        )
    if not value:
        raise InputError(f"{where} holds an empty list; expected text or a non-empty list of chat messages.")
    for i, message in enumerate(value):
        at = f"message {i} of {where}"
        if not isinstance(message, dict):
            raise InputError(
                f"{at} is {type(message).__name__} {_short(message)}; a chat message is a mapping "
                "with 'role' and 'content'."
            )
        if "role" not in message or message["role"] is None:
            raise InputError(f"{at} has no 'role' (keys {sorted(message)}); expected one of {list(MESSAGE_ROLES)}.")
        if message["role"] not in MESSAGE_ROLES:
            raise InputError(
                f"{at} has the unknown role {_short(message['role'])}; expected one of {list(MESSAGE_ROLES)}."
            )
        content = message.get("content")
        if content is None and not message.get("tool_calls"):
            raise InputError(f"{at} (role {message['role']!r}) has no 'content'.")
        if content is not None and not isinstance(content, (str, list)):
            raise InputError(
                f"{at} has content of type {type(content).__name__} {_short(content)}; expected text or a list of "
                "parts."
            )
    return "conversational"


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return value == ""
    return all(not message.get("content") for message in value)


class RowChecker:
    """Checks preference rows one at a time, in memory or as a stream delivers them, by their absolute index.

    Per row: ``chosen`` and ``rejected`` (and ``prompt`` when present) are text or well-formed chat messages, all of
    one kind, and of the same kind as the first row; the preference value (if a column is named) is in [0, 1].
    Errors are :class:`~trl_ipo.errors.InputError` naming the column, the row and the value. Rows that carry no
    signal — ``chosen`` identical to ``rejected``, or an empty completion — are counted (``identical``, ``empty``)
    and reported by :meth:`warn`.
    """

    def __init__(self, split: str = "train", preference_column: str | None = None, streamed: bool = False):
        self.split = split
        self.preference_column = preference_column
        self.streamed = streamed
        self.source = None  # the dataset checked (set by the trainer)
        self.reset()

    def reset(self) -> None:
        """Forget the rows seen (a stream is re-read from its start when training begins)."""
        self.rows = 0
        self.kind: str | None = None
        self.kind_row: int | None = None
        self.identical: list[int] = []
        self.empty: list[int] = []

    @property
    def label(self) -> str:
        return f"{'streamed ' if self.streamed else ''}{self.split} dataset"

    def where(self, column: str, index: int) -> str:
        return f"column {column!r}, row {index} of the {self.label}"

    def __call__(self, row: dict, index: int) -> None:
        kinds = {}
        for column in TEXT_COLUMNS:
            if column not in row:
                if column != "prompt":
                    raise InputError(f"{self.where(column, index)}: the column is missing (row keys {sorted(row)}).")
                continue
            kinds[column] = _value_kind(row[column], self.where(column, index))
        if len(set(kinds.values())) > 1:
            described = ", ".join(f"{c!r} is {k}" for c, k in kinds.items())
            raise InputError(
                f"row {index} of the {self.label} mixes conversational and plain values ({described}); "
                "a row's prompt, chosen and rejected must all be text or all be chat messages."
            )
        kind = next(iter(kinds.values()))
        if self.kind is None:
            self.kind, self.kind_row = kind, index
        elif kind != self.kind:
            raise InputError(
                f"row {index} of the {self.label} is {kind} but row {self.kind_row} is {self.kind}; a dataset "
                "must be all text or all chat messages (plain rows in a conversational dataset would get no "
                "end-of-sequence token)."
            )
        if self.preference_column is not None:
            if self.preference_column not in row:
                raise InputError(
                    f"preference_column={self.preference_column!r} is missing from row {index} of the {self.label}; "
                    f"its keys are {sorted(row)}."
                )
            check_preference_value(row[self.preference_column], self.where(self.preference_column, index))
        if row["chosen"] == row["rejected"]:
            self.identical.append(index)
        if _is_empty(row["chosen"]) or _is_empty(row["rejected"]):
            self.empty.append(index)
        self.rows += 1

    def check_streamed(self, row: dict, index: int) -> dict:
        """For ``IterableDataset.map(..., with_indices=True)``: check the row as it arrives, warn once per kind."""
        if index == 0:
            numeric = [k for k, v in row.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)]
            warn_unused_preference_columns(numeric, self.preference_column)
        before = {"identical": bool(self.identical), "empty": bool(self.empty)}
        self(row, index)
        self.warn([name for name, seen in before.items() if not seen and getattr(self, name)])
        return {}

    def warn(self, kinds=("identical", "empty")) -> None:
        """One warning per kind of signal-free pair, with its count (so far, for a stream) and first rows."""
        so_far = " so far (the stream is checked as it is read)" if self.streamed else ""
        for name, what in (
            ("identical", "have 'chosen' identical to 'rejected'"),
            ("empty", "have an empty 'chosen' or 'rejected' completion"),
        ):
            rows = getattr(self, name)
            if rows and name in kinds:
                warnings.warn(
                    f"{len(rows)} of {self.rows} pairs of the {self.label} {what}{so_far} (rows "
                    f"{rows[:5]}{' ...' if len(rows) > 5 else ''}); they carry no preference signal but count with "
                    "full weight in the loss.",
                    UserWarning,
                    stacklevel=3,
                )


def validate_preference_rows(dataset, split: str = "train", preference_column: str | None = None, warn: bool = True):
    """Check every row of an in-memory dataset (see :class:`RowChecker`); returns the checker with its counts.

    An empty dataset, a missing ``chosen``/``rejected`` column or a bad row is an :class:`InputError`. Rows with
    ``chosen == rejected`` or an empty completion are counted and, with ``warn``, reported in one warning each.
    """
    names = list(dataset.column_names)
    missing = [c for c in COMPLETION_COLUMNS if c not in names]
    if preference_column is not None and preference_column not in names:
        raise InputError(
            f"preference_column={preference_column!r} is not a column of the {split} dataset; its columns are "
            f"{sorted(names)}."
        )
    if missing:
        raise InputError(
            f"the {split} dataset is missing column(s) {missing}; its columns are {sorted(names)}. A preference "
            "dataset needs 'chosen' and 'rejected' (and optionally 'prompt')."
        )
    if len(dataset) == 0:
        raise InputError(f"the {split} dataset has no rows.")
    checker = RowChecker(split, preference_column)
    columns = [c for c in (*TEXT_COLUMNS, preference_column) if c is not None and c in names]
    index = 0
    for batch in dataset.select_columns(columns).iter(batch_size=1000):
        for values in zip(*(batch[c] for c in columns), strict=True):
            checker(dict(zip(columns, values, strict=True)), index)
            index += 1
    if warn:
        checker.warn()
        warn_unused_preference_columns(_numeric_features(dataset), preference_column)
    return checker


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def preference_from_votes(wins, losses) -> torch.Tensor:
    """q = wins / (wins + losses) per pair; a pair with no votes is an error (it carries no label)."""
    wins = torch.as_tensor(wins, dtype=torch.float64)
    losses = torch.as_tensor(losses, dtype=torch.float64)
    if (wins < 0).any() or (losses < 0).any():
        raise InputError("Vote counts must be non-negative.")
    total = wins + losses
    if (total == 0).any():
        row = int(torch.nonzero(total == 0)[0])
        raise InputError(f"Row {row} has no votes (wins + losses = 0), so its preference is undefined.")
    return wins / total


def preference_from_scores(chosen_scores, rejected_scores, temperature: float = 1.0) -> torch.Tensor:
    """Bradley–Terry: q = σ((s_chosen − s_rejected) / T)."""
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature!r}")
    chosen_scores = torch.as_tensor(chosen_scores, dtype=torch.float64)
    rejected_scores = torch.as_tensor(rejected_scores, dtype=torch.float64)
    return torch.sigmoid((chosen_scores - rejected_scores) / temperature)


def _require_columns(dataset, columns):
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise InputError(f"Columns {missing} are not in the dataset; its columns are {sorted(dataset.column_names)}.")


def add_preference_from_votes(dataset, wins_column: str, losses_column: str, output_column: str = "preference"):
    """Return ``dataset`` with ``output_column`` = wins / (wins + losses)."""
    _require_columns(dataset, [wins_column, losses_column])
    q = preference_from_votes(dataset[wins_column], dataset[losses_column]).tolist()
    return dataset.add_column(output_column, q)


def add_preference_from_scores(
    dataset,
    chosen_score_column: str,
    rejected_score_column: str,
    temperature: float = 1.0,
    output_column: str = "preference",
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
            raise InputError(
                f"preference_column={self.column!r} is missing from the batch; example keys are {sorted(examples[0])}."
            )
        values = [
            check_preference_value(ex[self.column], f"column {self.column!r}, example {i} of a {self.split} batch")
            for i, ex in enumerate(examples)
        ]
        batch[self.key] = torch.tensor(values, dtype=torch.float32)
        return batch
