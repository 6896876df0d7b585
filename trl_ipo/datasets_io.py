"""Preference datasets for the training commands: a hub name or a local path in, checked splits and columns out.

Accepted sources for ``--dataset_name`` (the same flag as ``trl dpo``):

* a local data file: ``.jsonl`` / ``.json``, ``.parquet``, ``.csv`` (becomes the ``train`` split);
* a local folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
* a local folder of data files (split names taken from the file names, as ``datasets.load_dataset`` does);
* a dataset name on the Hugging Face Hub (with ``--dataset_config`` for its configuration).

Every problem with the input — a path that does not exist, an unknown file type, an empty file, a malformed JSON
line, a missing split, missing columns, a bad row or preference value, a model that cannot be found — is raised as
:class:`~trl_ipo.errors.InputError` with a message that names the offending path, line, split, column or row,
before any training starts. This module is the one loader of ``trl-ipo train``, ``scripts/train_ipo.py`` and
``trl-ipo compare``.

Nothing here executes or unpickles what a file holds: data files are parsed by ``json``/``datasets``, and a model
is looked up by its ``config.json`` with ``trust_remote_code`` off unless the user turns it on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .data import validate_preference_rows
from .errors import InputError, one_line

__all__ = [
    "FILE_BUILDERS",
    "PREFERENCE_COLUMNS",
    "check_model",
    "check_writable_folder",
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
        raise InputError("No dataset given: pass --dataset_name (a hub name or a local file/folder).")
    path = Path(os.path.expanduser(name_or_path))
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise InputError(
                f"Dataset file {str(path)!r} has an unsupported type {path.suffix!r}; supported file types are "
                f"{sorted(FILE_BUILDERS)}, or a folder saved with `save_to_disk`."
            )
        check_data_file(path)
        try:
            dataset = load_dataset(builder, data_files={"train": str(path)}, streaming=streaming)
        except Exception as err:  # a CSV/Parquet parse error, an undecodable file, ...
            raise InputError(
                f"Could not read dataset file {str(path)!r} as {builder} ({type(err).__name__}: {one_line(err)})."
            ) from None
        return dataset
    if path.is_dir():
        if _is_saved_dataset(path):
            try:  # Arrow files and JSON metadata only
                dataset = load_from_disk(str(path))
            except Exception as err:
                raise InputError(
                    f"Could not read the saved dataset in {str(path)!r} ({type(err).__name__}: {one_line(err)})."
                ) from None
            if not isinstance(dataset, DatasetDict):
                dataset = DatasetDict({"train": dataset})
            return _as_streaming(dataset) if streaming else dataset
        try:
            return load_dataset(str(path), name=config, streaming=streaming)
        except Exception as err:  # the folder holds nothing `datasets` can read
            raise InputError(
                f"Could not read a dataset from folder {str(path)!r} ({type(err).__name__}: {one_line(err)}). "
                f"Expected data files of types {sorted(FILE_BUILDERS)} or a folder written by `save_to_disk`."
            ) from None
    if is_local_reference(name_or_path):
        raise InputError(f"Dataset file or folder not found: {name_or_path!r} (looked for {str(path.resolve())!r}).")
    try:
        return load_dataset(name_or_path, name=config, streaming=streaming)
    except Exception as err:  # not on the hub, no network, gated, unknown configuration, ...
        raise InputError(
            f"Could not load dataset {name_or_path!r} from the Hugging Face Hub ({type(err).__name__}: "
            f"{one_line(err)}). "
            f"For local data pass the path of a file ({', '.join(sorted(FILE_BUILDERS))}) or of a folder."
        ) from None


def select_split(dataset_dict, split: str, name_or_path: str, purpose: str = "training"):
    """``dataset_dict[split]``, or an error that lists the splits there are."""
    if split not in dataset_dict:
        raise InputError(
            f"Dataset {name_or_path!r} has no split {split!r} for {purpose}; its splits are {sorted(dataset_dict)}."
            + (" A single local file is loaded as the 'train' split." if purpose != "training" else "")
        )
    return dataset_dict[split]


def check_preference_columns(dataset, split: str, preference_column: str | None = None) -> None:
    """Check that ``dataset`` has the columns IPO reads, and that its preference values lie in [0, 1].

    The message of a failure lists the columns the dataset has and the ones expected.
    """
    names = _column_names(dataset, split)
    expected = list(REQUIRED_COLUMNS) + ([preference_column] if preference_column else [])
    missing = [c for c in expected if c not in names]
    if missing:
        expectation = "'chosen' and 'rejected' (and optionally 'prompt')"
        if preference_column:
            expectation += f", plus the preference column {preference_column!r} (--preference_column)"
        raise InputError(
            f"The {split} dataset is missing column(s) {missing}. Its columns are {list(names)}; IPO expects "
            f"{expectation}. Rename the columns in the data, or set --preference_column to the column holding q."
        )
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise InputError(f"The {split} dataset has no rows.")
    if hasattr(dataset, "select_columns") and hasattr(dataset, "__len__"):  # in memory: every row, now
        validate_preference_rows(dataset, split, preference_column, warn=False)  # the trainer warns


def _column_names(dataset, split: str) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None or not hasattr(dataset, "__len__"):  # a stream: its first row must exist (and has the columns)
        first = next(iter(dataset), None)
        if first is None:
            raise InputError(f"The streamed {split} dataset has no rows.")
        names = names or list(first)
    return list(names)


def check_data_file(path: Path) -> None:
    """An empty file, or a JSON / JSON Lines file that does not parse, is an error naming the file and line."""
    if path.stat().st_size == 0:
        raise InputError(f"Dataset file {str(path)!r} is empty.")
    if FILE_BUILDERS.get(path.suffix.lower()) != "json":
        return
    if path.suffix.lower() == ".json" and _is_json_document(path):
        return  # one JSON document (datasets reads its rows)
    _check_json_lines(path)


def _is_json_document(path: Path) -> bool:
    """True when the ``.json`` file parses as one document; False when it reads as JSON Lines (several lines, each
    starting an object), to be checked line by line; otherwise an error naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
        return True
    except json.JSONDecodeError as err:
        if err.lineno == 1 or not _first_char(path) == "{":
            raise InputError(
                f"Dataset file {str(path)!r}: line {err.lineno} is not valid JSON ({err.msg}, column {err.colno})."
            ) from None
    except UnicodeDecodeError as err:
        raise InputError(f"Dataset file {str(path)!r} is not UTF-8 text ({err.reason}).") from None
    return False


def _check_json_lines(path: Path) -> None:
    """Each non-blank line is one JSON object, and there is at least one."""
    rows = 0
    with open(path, encoding="utf-8", errors="strict") as f:
        try:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                _check_json_line(path, number, line)
                rows += 1
        except UnicodeDecodeError as err:
            raise InputError(f"Dataset file {str(path)!r} is not UTF-8 text ({err.reason}).") from None
    if rows == 0:
        raise InputError(f"Dataset file {str(path)!r} has no rows (only blank lines).")


def _check_json_line(path: Path, number: int, line: str) -> None:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(
            f"Dataset file {str(path)!r}: line {number} is not valid JSON ({err.msg}, column {err.colno})."
        ) from None
    if not isinstance(row, dict):
        raise InputError(
            f"Dataset file {str(path)!r}: line {number} holds a JSON {type(row).__name__}; each line of a "
            "JSON Lines file must be one object (one row)."
        )


def check_writable_folder(folder: str, flag: str = "--output_dir") -> None:
    """``folder`` exists or can be created, and a file can be written in it; else an error naming it."""
    import tempfile

    try:
        os.makedirs(os.path.expanduser(folder), exist_ok=True)
        with tempfile.TemporaryFile(dir=os.path.expanduser(folder)):
            pass
    except OSError as err:
        raise InputError(f"{flag} {folder!r} cannot be written ({err.strerror or err})") from None


def _first_char(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(4096).lstrip()[:1]


def check_model(
    name: str | None, revision: str | None = None, trust_remote_code: bool = False, flag: str = "--model_name_or_path"
) -> None:
    """Fail early, naming the path or hub id, when the model cannot be found or its config cannot be read.

    Only ``config.json`` is read (no weights, no code): remote code runs only when ``trust_remote_code`` is on.
    """
    if not name:
        raise InputError(f"no model given: pass {flag} (a local model folder or a hub id)")
    if is_local_reference(name) and not os.path.isdir(os.path.expanduser(name)):
        raise InputError(f"{flag} {name!r}: model folder not found")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(os.path.expanduser(name), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{flag} {name!r}: cannot load the model's config ({one_line(err)})") from None


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _as_streaming(dataset_dict):
    from datasets import IterableDatasetDict

    return IterableDatasetDict({name: split.to_iterable_dataset() for name, split in dataset_dict.items()})
