"""The trainer's data side: row checks before TRL tokenises, and rows dropped by ``max_length`` counted and reported.

In-memory datasets are checked row by row before training (:mod:`trl_ipo.data`); streamed ones as their rows arrive.
TRL drops rows whose prompt alone fills ``max_length``; here each drop is counted (``trainer.dropped_rows``), warned
about with the count, and a dataset that would lose every row is an error before training.
"""

from __future__ import annotations

import copy
import warnings

from datasets import Dataset, IterableDataset

from . import _compat
from .data import RowChecker, validate_preference_rows
from .errors import InputError


class DatasetChecksMixin:
    """Overrides of ``DPOTrainer``'s dataset preparation (mixed into :class:`~trl_ipo.IPOTrainer`)."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        checks = self.__dict__.setdefault("row_checks", {})
        if dataset_name not in checks or checks[dataset_name].source is not dataset:  # e.g. evaluate(new_dataset)
            checks.update(validate_datasets(args.preference_column, {dataset_name: dataset}))
        if isinstance(dataset, IterableDataset):
            return self._prepare_stream(dataset, processing_class, args, dataset_name, checks[dataset_name])
        before = len(dataset) if isinstance(dataset, Dataset) else None
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if before is not None and len(dataset) < before:
            dropped = before - len(dataset)
            self.dropped_rows[dataset_name] = dropped
            if dropped == before:
                raise InputError(_all_dropped(f"all {before} rows of the {dataset_name} dataset", args))
            warnings.warn(
                f"{dropped} of {before} rows of the {dataset_name} dataset were dropped because their prompt alone "
                f"is at least max_length={args.max_length} tokens (no completion token would be left). Raise "
                "max_length or shorten those prompts to keep them.",
                UserWarning,
                stacklevel=2,
            )
        return dataset

    def _prepare_stream(self, dataset, processing_class, args, dataset_name, checker):
        """A streamed dataset: rows checked as they arrive (by stream index), rows dropped by length counted."""
        dataset = dataset.map(checker.check_streamed, with_indices=True)
        if args.max_length is None or args.truncation_mode != "keep_start":
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            checker.reset()
            return dataset
        # TRL drops rows whose prompt fills max_length with a silent filter; filter here instead, counting them.
        unfiltered = copy.copy(args)
        unfiltered.max_length = None
        dataset = super()._prepare_dataset(dataset, processing_class, unfiltered, dataset_name)
        counter = _StreamDropCounter(self.dropped_rows, dataset_name, args.max_length)
        dataset = dataset.filter(counter, with_indices=True)
        with warnings.catch_warnings():  # the peek below re-reads the start of the stream; training warns again
            warnings.simplefilter("ignore")
            first = next(iter(dataset), None)
        if first is None:
            raise InputError(_all_dropped(f"all {counter.seen} rows of the streamed {dataset_name} dataset", args))
        counter.reset()
        checker.reset()
        return dataset

    def _report_streamed_drops(self) -> None:
        """After ``train()``: how many rows of a streamed train dataset ``max_length`` dropped (in-memory drops were
        reported before training). Rows read by dataloader worker processes are counted there, out of reach."""
        if not isinstance(self.train_dataset, IterableDataset) or self.args.max_length is None:
            return
        if self.args.dataloader_num_workers > 0:
            warnings.warn(
                "rows of the streamed train dataset dropped by max_length were filtered in "
                f"dataloader_num_workers={self.args.dataloader_num_workers} worker processes, so their count is "
                "unavailable (trainer.dropped_rows['train'] stays empty). Set dataloader_num_workers=0 to count them.",
                UserWarning,
                stacklevel=3,
            )
            return
        dropped = self.dropped_rows.get("train", 0)
        if dropped:
            warnings.warn(
                f"{dropped} rows of the streamed train dataset were dropped during training because their prompt "
                f"alone is at least max_length={self.args.max_length} tokens (trainer.dropped_rows['train']).",
                UserWarning,
                stacklevel=3,
            )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        column = self.args.preference_column
        columns = _compat.signature_columns(self)
        if column is not None and column not in columns:
            _compat.set_signature_columns(self, [*columns, column])


def validate_datasets(column, train_dataset, eval_dataset=None) -> dict:
    """Check the datasets before TRL reads them: ``{name: RowChecker}``.

    In-memory datasets are checked row by row now (warnings for signal-free pairs included). Streamed ones must
    yield a first row; their rows are checked as they arrive (see :meth:`IPOTrainer._prepare_stream`).
    """
    named = dict(train_dataset) if isinstance(train_dataset, dict) else {"train": train_dataset}
    if isinstance(eval_dataset, dict):
        named.update(eval_dataset)
    elif eval_dataset is not None:
        named["eval"] = eval_dataset
    checks = {}
    for name, dataset in named.items():
        if dataset is None:
            continue
        if isinstance(dataset, IterableDataset):
            if next(iter(dataset), None) is None:
                raise InputError(f"the streamed {name} dataset has no rows.")
            checker = RowChecker(name, column, streamed=True)
        elif isinstance(dataset, Dataset):
            checker = validate_preference_rows(dataset, name, column)
        else:  # a torch Dataset or a list of rows: TRL's own checks apply
            continue
        checker.source = dataset
        checks[name] = checker
    return checks


def _all_dropped(rows: str, args) -> str:
    return (
        f"{rows} were dropped because their prompt alone is at least max_length={args.max_length} tokens, leaving "
        "nothing to train on. Raise max_length or shorten the prompts."
    )


class _StreamDropCounter:
    """``IterableDataset.filter`` predicate: keep rows whose prompt fits; count (and warn once about) the others."""

    def __init__(self, dropped_rows: dict, dataset_name: str, max_length: int):
        self.dropped_rows, self.name, self.max_length = dropped_rows, dataset_name, max_length
        self.seen = 0

    def reset(self):
        self.seen = 0
        self.dropped_rows.pop(self.name, None)

    def __call__(self, example, index) -> bool:
        self.seen += 1
        if len(example["prompt_ids"]) < self.max_length:
            return True
        self.dropped_rows[self.name] = self.dropped_rows.get(self.name, 0) + 1
        if self.dropped_rows[self.name] == 1:
            warnings.warn(
                f"row {index} of the streamed {self.name} dataset was dropped because its prompt alone is at least "
                f"max_length={self.max_length} tokens (no completion token would be left); further drops are counted "
                f"in trainer.dropped_rows[{self.name!r}]. Raise max_length or shorten those prompts to keep them.",
                UserWarning,
                stacklevel=2,
            )
        return False
