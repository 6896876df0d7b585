"""Bad rows fail when the trainer is built, naming the column, the row and the value; signal-free pairs are counted."""

import warnings

import numpy as np
import pytest
import torch
from conftest import cpu_args, make_pairs
from datasets import Dataset

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.data import validate_preference_rows
from trl_ipo.errors import InputError
from trl_ipo.online.judges import preference_from_judge

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = make_pairs(8, seed=5)


def chat(*turns):
    return [{"role": role, "content": content} for role, content in turns]


CHAT_ROW = {
    "prompt": chat(("user", "the cat")),
    "chosen": chat(("assistant", "sat on a mat")),
    "rejected": chat(("assistant", "ran")),
}


def _trainer(load_model, tokenizer, tmp_path, dataset, eval_dataset=None, **overrides):
    return IPOTrainer(
        model=load_model(),
        args=IPOConfig(**cpu_args(tmp_path, **overrides)),
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )


def _with(rows, index, **values):
    rows = [dict(r) for r in rows]
    rows[index].update(values)
    return rows


# ------------------------------------------------------------------------------------- the trainer, before training
def test_empty_dataset_is_named(load_model, tokenizer, tmp_path):
    empty = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(InputError, match=r"^the train dataset has no rows\.$"):
        _trainer(load_model, tokenizer, tmp_path, empty)
    with pytest.raises(InputError, match=r"^the eval dataset has no rows\.$"):
        _trainer(load_model, tokenizer, tmp_path, Dataset.from_list(ROWS), empty)


def test_non_string_completion_names_column_row_and_value(load_model, tokenizer, tmp_path):
    # Arrow holds one type per column: a column of numbers fails at its first row.
    dataset = Dataset.from_dict(
        {
            "prompt": [r["prompt"] for r in ROWS],
            "chosen": [r["chosen"] for r in ROWS],
            "rejected": [42, 1, 2, 3, 4, 5, 6, 7],
        }
    )
    with pytest.raises(InputError, match=r"column 'rejected', row 0 of the train dataset holds int 42; expected text"):
        _trainer(load_model, tokenizer, tmp_path, dataset)
    # Rows of mixed types (as a stream or a hand-built dataset can deliver them): the absolute row is named.
    rows = _with(ROWS, 6, rejected=4.5)
    with pytest.raises(InputError, match=r"column 'rejected', row 6 of the train dataset holds float 4\.5"):
        validate_preference_rows(_ListDataset(rows), "train")


def test_missing_value_in_a_jsonl_style_row(load_model, tokenizer, tmp_path):
    dataset = Dataset.from_list(_with(ROWS, 3, chosen=None))
    with pytest.raises(InputError, match=r"column 'chosen', row 3 of the train dataset holds NoneType None"):
        _trainer(load_model, tokenizer, tmp_path, dataset)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"content": "sat"}, r"message 0 of column 'chosen', row 2 of the train dataset has no 'role'"),
        (
            {"role": "assistant"},
            r"message 0 of column 'chosen', row 2 of the train dataset \(role 'assistant'\) has no "
            r"'content'",
        ),
        ({"role": "robot", "content": "sat"}, r"message 0 of column 'chosen', row 2 .* unknown role 'robot'"),
        ({"role": "assistant", "content": 7}, r"message 0 of column 'chosen', row 2 .* content of type int 7"),
    ],
    ids=["no-role", "no-content", "unknown-role", "content-not-text"],
)
def test_bad_chat_messages(load_model, tokenizer, tmp_path, message, expected):
    rows = _with([CHAT_ROW] * 4, 2, chosen=[message])
    with pytest.raises(InputError, match=expected):
        validate_preference_rows(_ListDataset(rows), "train")
    if "content" in message and not isinstance(message["content"], str):
        return  # Dataset.from_list cannot type an int content next to text ones
    with pytest.raises(InputError, match=expected):
        _trainer(load_model, tokenizer, tmp_path, Dataset.from_list(rows))


def test_mixed_conversational_and_plain_rows():
    # Hand-built rows here; a JSON Lines file below, and streams in test_streaming.py.
    plain = {"prompt": "the cat", "chosen": " sat", "rejected": " ran"}
    with pytest.raises(InputError, match=r"row 3 of the eval dataset is plain but row 0 is conversational"):
        validate_preference_rows(_ListDataset([CHAT_ROW, CHAT_ROW, CHAT_ROW, plain]), "eval")
    with pytest.raises(
        InputError,
        match=r"row 1 of the train dataset mixes .*'prompt' is conversational, 'chosen' is "
        r"plain",
    ):
        validate_preference_rows(_ListDataset([CHAT_ROW, {**CHAT_ROW, "chosen": " sat"}]), "train")


class _ListDataset:
    """Rows of mixed types, which a typed Arrow column may not hold; the checker only needs these three methods."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = list(rows[0])

    def __len__(self):
        return len(self.rows)

    def select_columns(self, columns):
        return self

    def iter(self, batch_size):
        yield {c: [r[c] for r in self.rows] for c in self.column_names}


def test_every_row_dropped_by_max_length_is_an_error(load_model, tokenizer, tmp_path):
    with pytest.raises(InputError, match=r"all 8 rows of the train dataset were dropped .* max_length=1 tokens"):
        _trainer(load_model, tokenizer, tmp_path, Dataset.from_list(ROWS), max_length=1)


def test_signal_free_pairs_are_counted_and_warned(load_model, tokenizer, tmp_path):
    rows = _with(_with(_with(ROWS, 1, rejected=ROWS[1]["chosen"]), 4, rejected=ROWS[4]["chosen"]), 6, chosen="")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer(load_model, tokenizer, tmp_path, Dataset.from_list(rows))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any(
        "2 of 8 pairs of the train dataset have 'chosen' identical to 'rejected'" in m and "[1, 4]" in m
        for m in messages
    ), messages
    assert any(
        "1 of 8 pairs of the train dataset have an empty 'chosen' or 'rejected'" in m and "[6]" in m for m in messages
    ), messages
    assert (trainer.row_checks["train"].identical, trainer.row_checks["train"].empty) == ([1, 4], [6])


def test_clean_rows_warn_nothing(load_model, tokenizer, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _trainer(load_model, tokenizer, tmp_path, Dataset.from_list(ROWS))
    assert not [w for w in caught if "carry no preference signal" in str(w.message)]
    assert trainer.row_checks["train"].rows == len(ROWS)


# ----------------------------------------------------------------------------------------------------- judge output
@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        ({0: 0.9, 1: 0.1}, r"returned dict \{0: 0\.9, 1: 0\.1\}; it must return a list"),
        ("01", r"returned str '01'; it must return a list"),
        (0.7, r"returned float 0\.7; it must return a list"),
        (torch.tensor([[0.5, 0.5]]), r"returned a 2-D Tensor of shape \(1, 2\)"),
        ([0.5, "0.5"], r"returned str '0\.5' for pair 1"),
        ([[0.5], [0.5]], r"returned list \[0\.5\] for pair 0"),
        ([0.5, None], r"returned NoneType None for pair 1"),
    ],
    ids=["mapping", "string", "scalar", "2d-tensor", "string-item", "nested", "none-item"],
)
def test_judge_must_return_one_number_per_pair(returned, expected):
    with pytest.raises(InputError, match=expected):
        preference_from_judge(lambda p, a, b: returned, ["p0", "p1"], ["a0", "a1"], ["b0", "b1"])


def test_judge_sequences_tensors_and_arrays_are_read_in_order():
    for returned in ([0.25, 1], (0.25, 1.0), torch.tensor([0.25, 1.0]), np.array([0.25, 1.0]), [np.float32(0.25), 1]):
        q = preference_from_judge(lambda p, a, b, r=returned: r, ["p0", "p1"], ["a0", "a1"], ["b0", "b1"])
        assert q.tolist() == [0.25, 1.0], returned


def test_mixed_rows_of_a_json_lines_file_fail_in_the_trainer(load_model, tokenizer, tmp_path):
    import json

    from datasets import load_dataset

    plain = {"prompt": "the cat", "chosen": " sat", "rejected": " ran"}
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [CHAT_ROW, CHAT_ROW, CHAT_ROW, plain, CHAT_ROW]))
    dataset = load_dataset("json", data_files=str(path), split="train")  # one JSON-typed column holds both kinds
    assert dataset[3] == plain
    assert dataset[0] == CHAT_ROW
    with pytest.raises(
        InputError,
        match=r"row 3 of the train dataset is plain but row 0 is conversational; .* no "
        r"end-of-sequence token",
    ):
        _trainer(load_model, tokenizer, tmp_path, dataset)
