"""Bad input fails before training with a message naming the field, row and value; nothing is dropped silently."""

import pytest
from conftest import cpu_args, make_pairs
from datasets import Dataset

from trl_ipo import IPOConfig, IPOTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = make_pairs(6, seed=3, preference=True)


def _trainer(load_model, tokenizer, tmp_path, rows, eval_rows=None, **overrides):
    return IPOTrainer(
        model=load_model(),
        args=IPOConfig(**cpu_args(tmp_path, **overrides)),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=None if eval_rows is None else Dataset.from_list(eval_rows),
        processing_class=tokenizer,
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (1.25, r"Preference value 1\.25 at column 'q', row 4 of the train dataset is outside \[0, 1\]"),
        (float("nan"), r"Preference value is NaN at column 'q', row 4 of the train dataset"),
    ],
)
def test_bad_preference_values_fail_at_construction(bad, message, load_model, tokenizer, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[4]["q"] = bad
    with pytest.raises(ValueError, match=message):
        _trainer(load_model, tokenizer, tmp_path, rows, preference_column="q")


def test_non_numeric_preference(load_model, tokenizer, tmp_path):
    rows = [{**r, "q": str(r["q"])} for r in ROWS]
    rows[2]["q"] = "strong"
    with pytest.raises(ValueError, match=r"got '.*' \(str\) at column 'q', row 0 of the train dataset"):
        _trainer(load_model, tokenizer, tmp_path, rows, preference_column="q")


def test_missing_preference_column_in_eval(load_model, tokenizer, tmp_path):
    eval_rows = [{k: v for k, v in r.items() if k != "q"} for r in ROWS]
    with pytest.raises(
        ValueError,
        match=r"preference_column='q' is not a column of the eval dataset; its columns are \['chosen', 'prompt', 'rejected'\]",
    ):
        _trainer(load_model, tokenizer, tmp_path, ROWS, eval_rows, preference_column="q")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beta": 0.0}, r"IPOConfig\.beta must be > 0.*got 0\.0"),
        ({"beta": -1.0}, r"IPOConfig\.beta must be > 0.*got -1\.0"),
        ({"loss_form": "squared"}, r"IPOConfig\.loss_form must be one of \['paper', 'scaled'\], got 'squared'"),
        ({"logp_reduction": "max"}, r"IPOConfig\.logp_reduction must be one of \['mean', 'sum'\], got 'max'"),
        ({"loss_type": ["sigmoid"]}, r"IPOConfig\.loss_type=\['sigmoid'\].*use trl's DPOTrainer"),
        ({"loss_type": ["sft"]}, r"IPOConfig\.loss_type=\['sft'\]"),
        ({"symmetric": "maybe"}, r"IPOConfig\.symmetric must be true or false, got 'maybe'"),
    ],
)
def test_config_errors(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        IPOConfig(**cpu_args(tmp_path, **overrides))


def test_symmetric_from_strings(tmp_path):
    assert IPOConfig(**cpu_args(tmp_path, symmetric="false")).symmetric is False
    assert IPOConfig(**cpu_args(tmp_path, symmetric="True")).symmetric is True


def test_rows_dropped_by_truncation_are_counted_and_reported(load_model, tokenizer, tmp_path):
    max_length = 4
    rows = make_pairs(12, seed=4)
    long_prompts = sum(len(tokenizer(r["prompt"])["input_ids"]) >= max_length for r in rows)
    assert 0 < long_prompts < len(rows)  # the fixture really exercises the filter
    with pytest.warns(
        UserWarning, match=rf"{long_prompts} of 12 rows of the train dataset were dropped .* max_length=4"
    ):
        trainer = _trainer(load_model, tokenizer, tmp_path, rows, max_length=max_length)
    assert trainer.dropped_rows == {"train": long_prompts}
    assert len(trainer.train_dataset) == len(rows) - long_prompts
