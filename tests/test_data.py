"""Preference columns: validation messages and votes/scores → q against hand computations."""

import math

import pytest
import torch
from datasets import Dataset

from trl_ipo.data import (
    PreferenceCollator,
    add_preference_from_scores,
    add_preference_from_votes,
    preference_from_scores,
    preference_from_votes,
    validate_preference_column,
)


def test_votes():
    q = preference_from_votes([3, 0, 5], [1, 2, 5])
    assert q.tolist() == [0.75, 0.0, 0.5]
    with pytest.raises(ValueError, match="Row 1 has no votes"):
        preference_from_votes([1, 0], [0, 0])


def test_scores_bradley_terry():
    q = preference_from_scores([2.0, 0.0], [1.0, 3.0], temperature=0.5)
    expected = [1 / (1 + math.exp(-(2.0 - 1.0) / 0.5)), 1 / (1 + math.exp(-(0.0 - 3.0) / 0.5))]
    assert q.tolist() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        preference_from_scores([1.0], [0.0], temperature=0)


def test_dataset_helpers():
    ds = Dataset.from_dict({"w": [1, 2], "l": [1, 0], "sc": [0.0, 1.0], "sr": [0.0, 0.0]})
    assert add_preference_from_votes(ds, "w", "l")["preference"] == [0.5, 1.0]
    q = add_preference_from_scores(ds, "sc", "sr", output_column="q")["q"]
    assert q == pytest.approx([0.5, 1 / (1 + math.exp(-1.0))])
    with pytest.raises(ValueError, match=r"\['wins'\]"):
        add_preference_from_votes(ds, "wins", "l")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.2, 1.5], r"Preference value 1\.5 at column 'q', row 1 of the train dataset is outside \[0, 1\]"),
        ([0.2, 0.3, float("nan")], r"NaN at column 'q', row 2 of the train dataset"),
        (["0.3", "high"], r"got 'high' \(str\) at column 'q', row 0|got '0.3' \(str\) at column 'q', row 0"),
        ([-0.1], r"-0\.1 at column 'q', row 0 of the train dataset is outside"),
    ],
)
def test_validation_names_column_row_value(values, message):
    ds = Dataset.from_dict({"q": values})
    with pytest.raises(ValueError, match=message):
        validate_preference_column(ds, "q", "train")


def test_missing_column_lists_columns():
    ds = Dataset.from_dict({"prompt": ["a"], "chosen": ["b"], "rejected": ["c"]})
    with pytest.raises(ValueError, match=r"preference_column='q' is not a column of the eval dataset; its columns are"):
        validate_preference_column(ds, "q", "eval")


def test_collator_adds_preference():
    inner = lambda examples: {"n": len(examples)}  # noqa: E731
    batch = PreferenceCollator(inner, "q")([{"q": 0.25}, {"q": 1}])
    assert batch["n"] == 2
    assert batch["preference"].tolist() == [0.25, 1.0]
    assert batch["preference"].dtype == torch.float32
    with pytest.raises(ValueError, match="example 1 of a train batch"):
        PreferenceCollator(inner, "q")([{"q": 0.25}, {"q": 2.0}])


# ------------------------------------------------------------------------------- a soft-label column left unused
def test_unused_soft_label_column_warns_once_naming_column_and_setting(monkeypatch):
    import warnings

    from trl_ipo import data as data_module
    from trl_ipo.data import RowChecker, UnusedPreferenceColumnWarning, validate_preference_rows

    monkeypatch.setattr(data_module, "_warned_columns", set())
    rows = {"prompt": ["a", "b"], "chosen": [" x", " y"], "rejected": [" y", " x"]}
    dataset = Dataset.from_dict({**rows, "q": [0.9, 0.6], "score": [1.0, 2.0], "Preference": ["hi", "lo"]})
    with pytest.warns(UnusedPreferenceColumnWarning) as caught:
        validate_preference_rows(dataset, "train", None)
    messages = [str(w.message) for w in caught if w.category is UnusedPreferenceColumnWarning]
    assert len(messages) == 1  # 'score' is not named like q; 'Preference' holds text
    assert "numeric column 'q'" in messages[0]
    assert "preference_column='q'" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnusedPreferenceColumnWarning)
        validate_preference_rows(dataset, "eval", None)  # once: the eval split does not warn again
        monkeypatch.setattr(data_module, "_warned_columns", set())
        validate_preference_rows(dataset, "train", "q")  # the column is used: nothing to say
    # A stream is judged by its first row.
    with pytest.warns(UnusedPreferenceColumnWarning, match="numeric column 'preference'"):
        RowChecker("train", None, streamed=True).check_streamed(
            {**{k: v[0] for k, v in rows.items()}, "preference": 1}, 0
        )
