"""Resuming after a crash: which ``checkpoint-N`` folders are complete, and which one a run resumes from.

``Trainer`` writes a checkpoint in this order: the weights (``save_model``), the optimizer and scheduler states
(``optimizer.pt`` / ``scheduler.pt``, or DeepSpeed's ``global_stepN`` folder and ``latest``), the RNG state of each
rank (``rng_state.pth`` or ``rng_state_<rank>.pth``), and last ``trainer_state.json`` from the main process. Ranks do
not wait for each other in between, so a rank that dies late can leave a folder that has ``trainer_state.json`` but
lacks its own RNG file.

A checkpoint is **complete** when

* it carries the marker :data:`MARKER` that :class:`~trl_ipo.IPOTrainer` writes after every rank has finished the
  save (a barrier), and every file the marker lists is still there with its recorded size. A folder without the
  marker that is newer than a marked one is incomplete: its save did not finish on every rank. Otherwise, for
  checkpoints written by other trainers (no marker):
* ``trainer_state.json`` parses and names step N, the weights are there (a single file, or every shard an index
  lists), any DeepSpeed ``latest`` tag points to an existing folder, and the per-rank RNG files are numbered
  0…k−1 without a gap (k equal to the number of DeepSpeed optimizer shards when there are any).

A checkpoint can be complete yet hold no optimizer or scheduler state (``save_only_model=True``, files removed by
hand). Resuming from it would silently restart Adam's moments and the learning-rate schedule, so
:func:`resolve_resume` refuses unless ``allow_resume_without_optimizer`` is set, and then warns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

MARKER = "trl_ipo_checkpoint.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_RNG_RE = re.compile(r"^rng_state_(\d+)\.pth$")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


@dataclass
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found in one ``checkpoint-N`` folder."""

    path: str
    step: int
    problems: list[str] = field(default_factory=list)  # why it is incomplete; empty when complete
    has_optimizer: bool = False
    has_scheduler: bool = False

    @property
    def complete(self) -> bool:
        return not self.problems


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(N, path)`` of every ``checkpoint-N`` folder of ``output_dir``, oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def inspect_checkpoint(path: str | os.PathLike, require_marker: bool | None = None) -> CheckpointInfo:
    """Whether the checkpoint folder ``path`` is complete (see the module docstring) and holds optimizer state.

    ``require_marker``: a folder without :data:`MARKER` is incomplete. By default this holds when an older
    checkpoint next to it has a marker (the run writes markers, so this save did not finish on every rank).
    """
    path = Path(path)
    if require_marker is None:
        require_marker = _marked_older_sibling(path)
    match = _CHECKPOINT_RE.match(path.name)
    info = CheckpointInfo(str(path), int(match.group(1)) if match else -1)
    if not path.is_dir():
        info.problems.append("not a folder")
        return info
    names = set(os.listdir(path))
    deepspeed_tag = _deepspeed_tag(path, names, info)
    info.has_optimizer = bool(
        {"optimizer.pt", "optimizer.bin"} & names
        or any(n.startswith("optimizer") and (path / n).is_dir() for n in names)
        or (deepspeed_tag is not None and any(deepspeed_tag.glob("*optim_states.pt")))
    )
    info.has_scheduler = "scheduler.pt" in names or deepspeed_tag is not None
    if MARKER in names:
        _check_marker(path, info)
    else:
        _check_files(path, names, deepspeed_tag, info)
        if require_marker and not info.problems:
            info.problems.append(f"no {MARKER} though older checkpoints of this run have one: a rank did not finish")
    return info


def _marked_older_sibling(path: Path) -> bool:
    match = _CHECKPOINT_RE.match(path.name)
    if match is None:
        return False
    step = int(match.group(1))
    return any(n < step and (p / MARKER).is_file() for n, p in list_checkpoints(path.parent))


def _deepspeed_tag(path: Path, names: set[str], info: CheckpointInfo) -> Path | None:
    if "latest" not in names:
        return None
    try:
        tag = (path / "latest").read_text().strip()
    except OSError:
        tag = ""
    if not tag or not (path / tag).is_dir():
        info.problems.append(f"DeepSpeed 'latest' names {tag!r}, which is not a folder of the checkpoint")
        return None
    return path / tag


def _check_marker(path: Path, info: CheckpointInfo) -> None:
    try:
        marker = json.loads((path / MARKER).read_text())
        files = dict(marker["files"])
    except (OSError, ValueError, KeyError, TypeError):
        info.problems.append(f"{MARKER} is unreadable")
        return
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            info.problems.append(f"{name} is missing")
        elif file.stat().st_size != size:
            info.problems.append(f"{name} has {file.stat().st_size} bytes, {size} when saved")


def _check_files(path: Path, names: set[str], deepspeed_tag: Path | None, info: CheckpointInfo) -> None:
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if info.step >= 0 and state.get("global_step") != info.step:
            info.problems.append(f"trainer_state.json is at step {state.get('global_step')}, not {info.step}")
    except FileNotFoundError:
        info.problems.append("trainer_state.json is missing (the save was interrupted)")
    except (OSError, ValueError):
        info.problems.append("trainer_state.json is unreadable (the save was interrupted)")
    has_weights = bool(set(_WEIGHT_FILES) & names) or any(n.startswith("pytorch_model_fsdp") for n in names)
    for index in set(_INDEX_FILES) & names:
        try:
            shards = set(json.loads((path / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            info.problems.append(f"{index} is unreadable")
            continue
        missing = sorted(shards - names)
        if missing:
            info.problems.append(f"weight shards missing: {', '.join(missing)}")
        has_weights = True
    if not has_weights and deepspeed_tag is None:
        info.problems.append("no model weights")
    ranks = sorted(int(m.group(1)) for n in names if (m := _RNG_RE.match(n)))
    if ranks and ranks != list(range(len(ranks))):
        info.problems.append(f"RNG states of ranks {ranks} only (one rank did not finish its save)")
    if ranks and deepspeed_tag is not None:
        shards = len(list(deepspeed_tag.glob("*optim_states.pt")))
        if shards and shards != len(ranks):
            info.problems.append(f"{shards} DeepSpeed optimizer shards but RNG states of {len(ranks)} ranks")


def write_marker(path: str | os.PathLike, step: int, world_size: int) -> None:
    """Record that every rank finished saving ``path``: every file below it with its size, written atomically."""
    path = Path(path)
    files = {
        str(file.relative_to(path)): file.stat().st_size
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.name != MARKER
    }
    partial = path / f".{MARKER}.partial"
    partial.write_text(json.dumps({"global_step": step, "world_size": world_size, "files": files}, indent=1))
    os.replace(partial, path / MARKER)


def newest_complete_checkpoint(output_dir: str | os.PathLike) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The newest complete checkpoint of ``output_dir`` (or ``None``) and the incomplete ones newer than it."""
    skipped = []
    found = list_checkpoints(output_dir)
    marked = [n for n, p in found if (p / MARKER).is_file()]
    for step, path in reversed(found):
        info = inspect_checkpoint(path, require_marker=bool(marked) and step > marked[0])
        if info.complete:
            return info, skipped
        skipped.append(info)
    return None, skipped


def parse_resume_flag(value):
    """``resume_from_checkpoint`` as given (bool, path, or a CLI string) → ``True``, ``None`` or a path."""
    if isinstance(value, bool) or value is None:
        return value or None
    text = str(value).strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return None
    return text


def resolve_resume(
    value, output_dir, allow_missing_optimizer: bool = False, world_size: int | None = None
) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from, and the warnings to show.

    ``value``: ``True`` (the newest complete checkpoint of ``output_dir``), a checkpoint path, or ``None``/``False``
    (no resume). Raises ``ValueError`` when there is nothing complete to resume from, when an explicit path is
    incomplete, or when the checkpoint has no optimizer/scheduler state and ``allow_missing_optimizer`` is False.
    Warns when the checkpoint's marker records another ``world_size`` than this run's.
    """
    value = parse_resume_flag(value)
    if value is None:
        return None, []
    messages = []
    if value is True:
        info, skipped = newest_complete_checkpoint(output_dir)
        for bad in skipped:
            messages.append(
                f"Skipping incomplete checkpoint {bad.path}: {'; '.join(bad.problems)}. It is left in place and will "
                "be overwritten when the run saves that step again."
            )
        if info is None:
            found = f" ({len(skipped)} incomplete)" if skipped else ""
            raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint in {output_dir}{found}.")
    else:
        info = inspect_checkpoint(value)
        if not info.complete:
            newest, _ = newest_complete_checkpoint(Path(value).parent)
            hint = f" The newest complete one there is {newest.path}." if newest is not None else ""
            raise ValueError(f"Checkpoint {value} is incomplete: {'; '.join(info.problems)}.{hint}")
    saved_by = saved_world_size(info.path)
    if world_size is not None and saved_by is not None and saved_by != world_size:
        messages.append(
            f"Checkpoint {info.path} was saved by {saved_by} rank(s) and this run has {world_size}: each rank's "
            "batches and RNG stream differ, so the resumed run will not match an uninterrupted one exactly."
        )
    missing = [
        name for name, present in (("optimizer", info.has_optimizer), ("scheduler", info.has_scheduler)) if not present
    ]
    if missing:
        what = " and ".join(missing)
        if not allow_missing_optimizer:
            raise ValueError(
                f"Checkpoint {info.path} has no {what} state (saved with save_only_model=True, or files removed). "
                f"Resuming would restart the {what} from scratch and the run would not continue as it was. Set "
                "allow_resume_without_optimizer=True to resume anyway, or resume from a checkpoint that has it."
            )
        messages.append(
            f"RESUMING WITHOUT {what.upper()} STATE: checkpoint {info.path} has none, so the {what} starts fresh "
            "(allow_resume_without_optimizer=True). The run will not match an uninterrupted one."
        )
    return info.path, messages


def saved_world_size(path: str | os.PathLike) -> int | None:
    """The number of ranks that saved the checkpoint, from its marker (``None`` without one)."""
    try:
        return int(json.loads((Path(path) / MARKER).read_text())["world_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def logged_num_tokens(path: str | os.PathLike) -> int:
    """The last ``num_tokens`` logged in the checkpoint's ``trainer_state.json`` (0 when there is none)."""
    try:
        history = json.loads((Path(path) / "trainer_state.json").read_text()).get("log_history", [])
    except (OSError, ValueError):
        return 0
    counts = [entry["num_tokens"] for entry in history if "num_tokens" in entry]
    return int(counts[-1]) if counts else 0


def warn_all(messages: list[str]) -> None:
    for message in messages:
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)
