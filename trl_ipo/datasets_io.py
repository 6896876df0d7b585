"""Preference datasets for the training commands: a hub name or a local path in, checked splits and columns out.

Accepted sources for ``--dataset_name`` (the same flag as ``trl dpo``):

* a local data file: ``.jsonl`` / ``.json``, ``.parquet``, ``.csv`` (becomes the ``train`` split);
* a local folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
* a local folder of data files (split names taken from the file names, as ``datasets.load_dataset`` does);
* a dataset name on the Hugging Face Hub (with ``--dataset_config`` for its configuration).

Every problem with the input — a path that does not exist, an unknown file type, a missing split, missing
columns, a bad preference value — is raised as :class:`DatasetInputError` with a message that names the
offending path, split, column or row, before any training starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from .data import validate_preference_column

__all__ = [
    "DatasetInputError",
    "FILE_BUILDERS",
    "PREFERENCE_COLUMNS",
    "is_local_reference",
    "load_preference_dataset",
    "select_split",
    "check_preference_columns",
]

# File suffix → the `datasets` builder that reads it.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}

# Columns of a preference row, as TRL's DPOTrainer reads them: `prompt` is optional (without it the shared prefix of
# `chosen` and `rejected` is taken as the prompt); `chosen` and `rejected` are required.
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
REQUIRED_COLUMNS = ("chosen", "rejected")


class DatasetInputError(ValueError):
    """A dataset argument that cannot be used; the message says what is wrong and what is expected."""


def is_local_reference(name_or_path: str) -> bool:
    """True when ``name_or_path`` exists locally or is written like a path (so it must not go to the hub)."""
    if os.path.exists(os.path.expanduser(name_or_path)):
        return True
    return (
        name_or_path.startswith(("/", "./", "../", "~", ".\\"))
        or Path(name_or_path).suffix.lower() in FILE_BUILDERS
        or name_or_path.count("/") > 1
    )


def load_preference_dataset(name_or_path: str, config: str | None = None, streaming: bool = False):
    """Load ``name_or_path`` (see the module docstring) as a ``DatasetDict`` (or ``IterableDatasetDict``)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if not name_or_path:
        raise DatasetInputError("No dataset given: pass --dataset_name (a hub name or a local file/folder).")
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise DatasetInputError(
                f"Dataset file {str(path)!r} has an unsupported type {path.suffix!r}; supported file types are "
                f"{sorted(FILE_BUILDERS)}, or a folder saved with `save_to_disk`."
            )
        return load_dataset(builder, data_files={"train": str(path)}, streaming=streaming)
    if path.is_dir():
        if _is_saved_dataset(path):
            dataset = load_from_disk(str(path))
            if not isinstance(dataset, DatasetDict):
                dataset = DatasetDict({"train": dataset})
            return _as_streaming(dataset) if streaming else dataset
        try:
            return load_dataset(str(path), name=config, streaming=streaming)
        except Exception as err:  # the folder holds nothing `datasets` can read
            raise DatasetInputError(
                f"Could not read a dataset from folder {str(path)!r} ({type(err).__name__}: {err}). Expected data "
                f"files of types {sorted(FILE_BUILDERS)} or a folder written by `save_to_disk`."
            ) from None
    if is_local_reference(name_or_path):
        raise DatasetInputError(
            f"Dataset file or folder not found: {name_or_path!r} (looked for {str(path.resolve())!r})."
        )
    try:
        return load_dataset(name_or_path, name=config, streaming=streaming)
    except Exception as err:  # not on the hub, no network, gated, unknown configuration, ...
        raise DatasetInputError(
            f"Could not load dataset {name_or_path!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
            f"For local data pass the path of a file ({', '.join(sorted(FILE_BUILDERS))}) or of a folder."
        ) from None


def select_split(dataset_dict, split: str, name_or_path: str, purpose: str = "training"):
    """``dataset_dict[split]``, or an error that lists the splits there are."""
    if split not in dataset_dict:
        raise DatasetInputError(
            f"Dataset {name_or_path!r} has no split {split!r} for {purpose}; its splits are {sorted(dataset_dict)}."
            + (" A single local file is loaded as the 'train' split." if purpose != "training" else "")
        )
    return dataset_dict[split]


def check_preference_columns(dataset, split: str, preference_column: str | None = None) -> None:
    """Check that ``dataset`` has the columns IPO reads, and that its preference values lie in [0, 1].

    The message of a failure lists the columns the dataset has and the ones expected.
    """
    names = _column_names(dataset)
    if names is None:
        return
    expected = list(REQUIRED_COLUMNS) + ([preference_column] if preference_column else [])
    missing = [c for c in expected if c not in names]
    if missing:
        expectation = "'chosen' and 'rejected' (and optionally 'prompt')"
        if preference_column:
            expectation += f", plus the preference column {preference_column!r} (--preference_column)"
        raise DatasetInputError(
            f"The {split} dataset is missing column(s) {missing}. Its columns are {list(names)}; IPO expects "
            f"{expectation}. Rename the columns in the data, or set --preference_column to the column holding q."
        )
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise DatasetInputError(f"The {split} dataset has no rows.")
    if preference_column:
        try:
            validate_preference_column(dataset, preference_column, split)
        except ValueError as err:
            raise DatasetInputError(str(err)) from None


def _column_names(dataset):
    names = getattr(dataset, "column_names", None)
    if names is None:  # a streamed dataset whose features are unknown until read: look at the first row
        first = next(iter(dataset), None)
        names = list(first) if first is not None else None
    return names


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _as_streaming(dataset_dict):
    from datasets import IterableDatasetDict

    return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in dataset_dict.items()})
