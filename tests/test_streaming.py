"""Streamed (IterableDataset) preference data: rows checked as they arrive, by their index in the stream."""

import warnings

import pytest
from conftest import cpu_args, make_pairs
from datasets import IterableDataset

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = make_pairs(12, seed=4, preference=True)


def stream(rows):
    def generate():
        yield from rows

    return IterableDataset.from_generator(generate)


def _trainer(load_model, tokenizer, tmp_path, dataset, **overrides):
    overrides = {"per_device_train_batch_size": 2, "max_steps": 100, **overrides}
    return IPOTrainer(
        model=load_model(),
        args=IPOConfig(**cpu_args(tmp_path, **overrides)),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def read_all(trainer):
    """One pass over the training stream, as the training loop reads it."""
    return sum(len(batch["input_ids"]) // 2 for batch in trainer.get_train_dataloader())


def test_empty_stream(load_model, tokenizer, tmp_path):
    with pytest.raises(InputError, match=r"^the streamed train dataset has no rows\.$"):
        _trainer(load_model, tokenizer, tmp_path, stream([]))


def test_bad_preference_is_reported_by_its_index_in_the_stream(load_model, tokenizer, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[9]["q"] = 3.0
    trainer = _trainer(load_model, tokenizer, tmp_path, stream(rows), preference_column="q")  # row 0 is fine
    with pytest.raises(InputError, match=r"Preference value 3\.0 at column 'q', row 9 of the streamed train dataset"):
        read_all(trainer)


def test_plain_row_in_a_conversational_stream(load_model, tokenizer, tmp_path):
    chat = {
        "prompt": [{"role": "user", "content": "the cat"}],
        "chosen": [{"role": "assistant", "content": "sat"}],
        "rejected": [{"role": "assistant", "content": "ran"}],
    }
    plain = {"prompt": "the cat", "chosen": " sat", "rejected": " ran"}
    trainer = _trainer(load_model, tokenizer, tmp_path, stream([plain] * 5 + [chat]))
    with pytest.raises(InputError, match=r"row 5 of the streamed train dataset is conversational but row 0 is plain"):
        read_all(trainer)


def test_rows_dropped_by_length_are_counted_and_warned(load_model, tokenizer, tmp_path):
    max_length = 4
    long_prompts = [i for i, r in enumerate(ROWS) if len(tokenizer(r["prompt"])["input_ids"]) >= max_length]
    assert 0 < len(long_prompts) < len(ROWS)  # the fixture exercises the filter
    trainer = _trainer(load_model, tokenizer, tmp_path, stream(ROWS), max_length=max_length)
    assert trainer.dropped_rows == {}  # nothing read yet (the start-up peek is not counted)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = read_all(trainer)
    assert kept == len(ROWS) - len(long_prompts)
    assert trainer.dropped_rows == {"train": len(long_prompts)}
    messages = [str(w.message) for w in caught]
    assert any(
        f"row {long_prompts[0]} of the streamed train dataset was dropped" in m and "max_length=4" in m
        for m in messages
    ), messages


def test_training_on_a_stream_ends_with_the_count_of_dropped_rows(load_model, tokenizer, tmp_path):
    max_length = 4
    long_prompts = [i for i, r in enumerate(ROWS) if len(tokenizer(r["prompt"])["input_ids"]) >= max_length]
    kept = len(ROWS) - len(long_prompts)
    steps = kept // 2  # one pass over the stream in batches of 2 pairs
    trainer = _trainer(load_model, tokenizer, tmp_path, stream(ROWS), max_length=max_length, max_steps=steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.dropped_rows["train"] >= len(long_prompts)
    summary = [str(w.message) for w in caught if "were dropped during training" in str(w.message)]
    assert summary == [
        f"{trainer.dropped_rows['train']} rows of the streamed train dataset were dropped during training because "
        "their prompt alone is at least max_length=4 tokens (trainer.dropped_rows['train'])."
    ]


def test_every_streamed_row_dropped_is_an_error_before_training(load_model, tokenizer, tmp_path):
    with pytest.raises(InputError, match=r"all 12 rows of the streamed train dataset were dropped .* max_length=1"):
        _trainer(load_model, tokenizer, tmp_path, stream(ROWS), max_length=1)


def test_identical_pairs_in_a_stream_are_warned(load_model, tokenizer, tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[7]["rejected"] = rows[7]["chosen"]
    trainer = _trainer(load_model, tokenizer, tmp_path, stream(rows))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_all(trainer)
    assert any(
        "streamed train dataset have 'chosen' identical to 'rejected'" in str(w.message) and "[7]" in str(w.message)
        for w in caught
    )
    assert trainer.row_checks["train"].identical == [7]


def test_drops_in_dataloader_workers_are_said_to_be_uncounted(load_model, tokenizer, tmp_path):
    """Rows filtered in worker processes are counted there; the trainer says the count is unavailable instead of
    reporting none."""
    trainer = _trainer(
        load_model, tokenizer, tmp_path, stream(ROWS), max_length=4, max_steps=2, dataloader_num_workers=1
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.dropped_rows == {}  # the workers' counts never reach this process
    messages = [str(w.message) for w in caught]
    assert not any("were dropped during training" in m for m in messages)
    assert any("dataloader_num_workers=1 worker processes, so their count is unavailable" in m for m in messages)
