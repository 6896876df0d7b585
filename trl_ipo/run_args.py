"""``training_args.json``: a plain-JSON record of a run's arguments, written next to Trainer's ``training_args.bin``.

``transformers.Trainer`` pickles its arguments into ``training_args.bin``. Reading that file back means unpickling
it, and unpickling a file can run arbitrary code, so trl_ipo never loads a ``training_args.bin`` (nor any pickle) from
a folder it is pointed at. Instead :class:`~trl_ipo.trainer.IPOTrainer` writes this JSON record at every save, and
tools that need a run's settings (``trl-ipo plot`` reads β) read the JSON record only.

The record is ``TrainingArguments.to_dict()``: every ``*_token`` field (``hub_token``, …) is replaced by a
placeholder, and every secret-named entry at any depth (``model_init_kwargs={"token": …}``, see
:mod:`trl_ipo.redact`) is masked, so no credential is written in clear.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .redact import redact

ARGS_RECORD = "training_args.json"
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a record is a few KiB; a larger file is not a record and is not read


def write_args_record(args, folder) -> Path:
    """Write ``args.to_dict()`` (secrets masked at any depth) as JSON to ``folder/training_args.json``; return the
    path."""
    path = Path(folder) / ARGS_RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(redact(args.to_dict()), indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a crash mid-write leaves the old record or none, never half a file
    return path


def save_args_record(trainer, output_dir=None) -> None:
    """From a trainer's ``_save``: write the record into ``output_dir`` (default ``args.output_dir``) on the saving
    rank."""
    if trainer.args.should_save:
        write_args_record(trainer.args, output_dir if output_dir is not None else trainer.args.output_dir)


def read_args_record(folder) -> dict | None:
    """The JSON record in ``folder``, or None when there is none, it is larger than :data:`MAX_RECORD_BYTES` (not
    read), or it is not a JSON object (never unpickles)."""
    path = Path(folder) / ARGS_RECORD
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def recorded_beta(folder) -> float | None:
    """β from the JSON record in ``folder`` when it is a finite positive number, else None."""
    record = read_args_record(folder)
    beta = None if record is None else record.get("beta")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
        return None
    return float(beta)
