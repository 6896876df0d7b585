"""Resuming after a crash: which ``checkpoint-N`` folders are complete, which one a run resumes from, and which old
ones a run may delete.

``Trainer`` writes a checkpoint in this order: the weights (``save_model``), the optimizer and scheduler states
(``optimizer.pt`` / ``scheduler.pt``, or DeepSpeed's ``global_stepN`` folder and ``latest``), the RNG state of each
rank (``rng_state.pth`` or ``rng_state_<rank>.pth``), and last ``trainer_state.json`` from the main process. Ranks do
not wait for each other in between, so a rank that dies late can leave a folder that has ``trainer_state.json`` but
lacks its own RNG file.

A checkpoint is **complete** when

* it carries the marker :data:`MARKER` that :class:`~trl_ipo.IPOTrainer` writes after every rank has finished the
  save (a barrier), the marker lists at least one file, every name it lists is a regular file inside the folder (never
  an absolute path, a ``..`` or a symbolic link; nothing outside the folder is looked at), and each still has its
  recorded size and SHA-256. A folder without the marker that is newer than a marked one is incomplete: its save did
  not finish on every rank. Otherwise, for checkpoints written by other trainers (no marker):
* ``trainer_state.json`` parses and names step N, the weights are there (a single file, or every shard an index
  lists), any DeepSpeed ``latest`` tag points to an existing folder, and the per-rank RNG files are numbered
  0…k−1 without a gap (k equal to the number of DeepSpeed optimizer shards when there are any);

and, in both cases, the files of the folder hold what their names say (:func:`trl_ipo.checkpoint_files.content_problem`:
JSON files parse, safetensors headers fit their file, torch files start as ``torch.save`` writes them), and
``trainer_state.json`` names step N.

A checkpoint can be complete yet hold no optimizer or scheduler state (``save_only_model=True``, files removed by
hand). Resuming from it would silently restart Adam's moments and the learning-rate schedule, so
:func:`resolve_resume` refuses unless ``allow_resume_without_optimizer`` is set, and then warns. It also warns when
the resumed run changes a setting of the IPO loss (:func:`loss_settings`) against the checkpoint's own record of its
arguments (``training_args.json``, :mod:`trl_ipo.run_args`).

With ``save_total_limit``, old checkpoints are deleted only after the new one is marked, and never the newest marked
one (:func:`rotate_checkpoints`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint_files import content_problem, regular_files, resolve_inside, sha256_many
from .errors import InputError
from .run_args import read_args_record
from .validation import FALSE_WORDS, TRUE_WORDS

logger = logging.getLogger(__name__)

MARKER = "trl_ipo_checkpoint.json"
MARKER_FORMAT = 2  # 1: {"files": {name: size}}; 2: {"files": {name: {"size": ..., "sha256": ...}}}
HASH_ENV = "TRL_IPO_CHECKPOINT_HASH"  # "sha256" (the default) or "none": sizes and file headers only
_PARTIAL = f".{MARKER}.partial"
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_RNG_RE = re.compile(r"^rng_state_(\d+)\.pth$")


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
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
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
        if not info.problems:
            _check_trainer_state(path, info)
    else:
        _check_files(path, names, deepspeed_tag, info)
        if require_marker and not info.problems:
            info.problems.append(f"no {MARKER} though older checkpoints of this run have one: a rank did not finish")
    if not info.problems:
        _check_contents(path, names, info)
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
    plain = bool(tag) and "/" not in tag and "\\" not in tag and tag not in (".", "..")  # a name inside the folder
    if not plain or not _is_real_folder(path / tag):
        info.problems.append(f"DeepSpeed 'latest' names {tag!r}, which is not a folder of the checkpoint")
        return None
    return path / tag


def _is_real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _check_marker(path: Path, info: CheckpointInfo) -> None:
    """Every file the marker lists is inside the folder with its recorded size and SHA-256 (see the module doc)."""
    files = _read_marker(path, info)
    if files is None:
        return
    to_hash = _check_marker_sizes(path, files, info)
    if info.problems:
        return
    _check_marker_digests(to_hash, info)


def _read_marker(path: Path, info: CheckpointInfo) -> dict | None:
    """The marker's ``files`` mapping; None (with the problem noted) when it is unreadable or empty."""
    try:
        files = json.loads((path / MARKER).read_text())["files"]
        if not isinstance(files, dict):
            raise TypeError(files)
    except (OSError, ValueError, KeyError, TypeError):
        info.problems.append(f"{MARKER} is unreadable")
        return None
    if not files:
        info.problems.append(f"{MARKER} lists no files")
        return None
    return files


def _check_marker_sizes(path: Path, files: dict, info: CheckpointInfo) -> list[tuple[str, Path, str]]:
    """Notes each listed file that is missing, outside the folder or of another size; returns those left to hash."""
    to_hash = []
    for name, entry in files.items():
        size, digest = _marker_entry(entry)
        if size is None:
            info.problems.append(f"{MARKER} records no valid size for {name!r}")
            continue
        file, found = resolve_inside(path, name)  # never looks outside the folder
        if file is None:
            info.problems.append(f"{found} ({MARKER} lists it)")
        elif found.st_size != size:
            info.problems.append(f"{name} has {found.st_size} bytes, {size} when saved")
        elif digest is not None:
            to_hash.append((name, file, digest))
    return to_hash


def _check_marker_digests(to_hash: list[tuple[str, Path, str]], info: CheckpointInfo) -> None:
    """Notes each file whose SHA-256 differs from the recorded one, or that cannot be read."""
    try:
        actual = sha256_many([file for _, file, _ in to_hash])
    except OSError as err:
        info.problems.append(f"{err.filename or 'a file'} cannot be read ({err.strerror})")
        return
    for (name, _, digest), found in zip(to_hash, actual, strict=True):
        if found != digest:
            info.problems.append(f"{name} is not the file that was saved (its SHA-256 differs from the recorded one)")


def _marker_entry(entry) -> tuple[int | None, str | None]:
    """``(size, sha256)`` of one marker entry: a size (format 1) or ``{"size": ..., "sha256": ...}`` (format 2)."""
    digest = None
    if isinstance(entry, dict):
        digest = entry.get("sha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256_RE.match(digest)):
            return None, None
        entry = entry.get("size")
    if isinstance(entry, bool) or not isinstance(entry, int) or entry < 0:
        return None, None
    return entry, digest


def _check_trainer_state(path: Path, info: CheckpointInfo) -> None:
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except FileNotFoundError:
        info.problems.append("trainer_state.json is missing (the save was interrupted)")
        return
    except (OSError, ValueError) as err:
        info.problems.append(f"trainer_state.json is unreadable ({err})")
        return
    step = state.get("global_step") if isinstance(state, dict) else None
    if info.step >= 0 and step != info.step:
        info.problems.append(f"trainer_state.json is at step {step}, not {info.step}")


def _check_contents(path: Path, names: set[str], info: CheckpointInfo) -> None:
    """Each top-level regular file holds what its name says (JSON parses, safetensors and torch headers)."""
    for name in sorted(names - {MARKER, _PARTIAL, "trainer_state.json"}):
        try:
            regular = stat.S_ISREG(os.lstat(path / name).st_mode)
        except OSError:
            continue
        problem = content_problem(path / name) if regular else None
        if problem:
            info.problems.append(problem)


def _check_files(path: Path, names: set[str], deepspeed_tag: Path | None, info: CheckpointInfo) -> None:
    _check_trainer_state(path, info)
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


def write_marker(path: str | os.PathLike, step: int, world_size: int, hashes: bool | None = None) -> None:
    """Record that every rank finished saving ``path``: every regular file below it with its size and SHA-256.

    ``hashes=False`` records sizes only (default: :func:`hashing_enabled`). Hashing reads every file once more, on
    the main process only, several files at a time; the marker is written to a temporary name and renamed, so it is
    never half-written.
    """
    path = Path(path)
    files = regular_files(path, skip=(MARKER, _PARTIAL))
    hashes = hashing_enabled() if hashes is None else hashes
    digests = sha256_many([path / name for name in files]) if hashes else [None] * len(files)
    entries = {
        name: {"size": size, **({"sha256": digest} if digest else {})}
        for (name, size), digest in zip(files.items(), digests, strict=True)
    }
    marker = {"format": MARKER_FORMAT, "global_step": step, "world_size": world_size, "files": entries}
    (path / _PARTIAL).write_text(json.dumps(marker, indent=1))
    os.replace(path / _PARTIAL, path / MARKER)


def hashing_enabled() -> bool:
    """Whether :func:`write_marker` records SHA-256 hashes: the environment variable ``TRL_IPO_CHECKPOINT_HASH``,
    ``sha256`` (the default) or ``none``. Raises :class:`~trl_ipo.errors.InputError` naming the variable for any
    other value."""
    value = os.environ.get(HASH_ENV, "sha256").strip().lower()
    if value in ("sha256", ""):
        return True
    if value == "none":
        return False
    raise InputError(f"{HASH_ENV}={value!r}: use 'sha256' (the default: record each file's hash) or 'none'.")


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
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in (*FALSE_WORDS, ""):
        return None
    return text


def resolve_resume(
    value,
    output_dir,
    allow_missing_optimizer: bool = False,
    world_size: int | None = None,
    settings: dict | None = None,
) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from, and the warnings to show.

    ``value``: ``True`` (the newest complete checkpoint of ``output_dir``), a checkpoint path, or ``None``/``False``
    (no resume). Raises ``ValueError`` when there is nothing complete to resume from, when an explicit path is
    incomplete, or when the checkpoint has no optimizer/scheduler state and ``allow_missing_optimizer`` is False.
    Warns about each newer incomplete checkpoint skipped (naming the bad file), when the checkpoint's marker records
    another ``world_size`` than this run's, and for each of ``settings`` (this run's :func:`loss_settings`) that
    differs from the checkpoint's ``training_args.json``.
    """
    value = parse_resume_flag(value)
    if value is None:
        return None, []
    messages = []
    if value is True:
        info, skipped = newest_complete_checkpoint(output_dir)
        if info is None:
            found = f" ({len(skipped)} incomplete)" if skipped else ""
            raise ValueError(f"resume_from_checkpoint=True: no complete checkpoint in {output_dir}{found}.")
        for bad in skipped:
            messages.append(
                f"Skipping incomplete checkpoint {bad.path}: {'; '.join(bad.problems)}. Resuming from {info.path} "
                "instead; the incomplete folder is left in place and is overwritten when the run saves that step again."
            )
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
    messages.extend(setting_changes(info.path, settings or {}))
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


def loss_settings(args) -> dict:
    """The settings of ``args`` that define the IPO loss (:func:`trl_ipo.config.ipo_setting_names`), as they appear
    in a ``training_args.json`` record (JSON values); names ``args`` does not have are left out."""
    from .config import ipo_setting_names

    return {name: _as_json(getattr(args, name)) for name in ipo_setting_names() if hasattr(args, name)}


def setting_changes(path: str | os.PathLike, settings: dict) -> list[str]:
    """One warning for each of ``settings`` whose value differs from the record the checkpoint ``path`` keeps of
    its run's arguments (:func:`trl_ipo.run_args.read_args_record`); none when the checkpoint has no record or the
    record lacks the setting."""
    record = read_args_record(path)
    if record is None:
        return []
    return [
        f"Resuming from {path} with {name}={now!r}, but the checkpoint was trained with {name}={record[name]!r}: "
        "the loss has changed, so the resumed run does not continue the objective the checkpoint was trained on."
        for name, now in settings.items()
        if name in record and _as_json(record[name]) != now
    ]


def _as_json(value):
    return json.loads(json.dumps(value, default=str))  # as trl_ipo.run_args writes it


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


def rotation_victims(ordered: list, save_total_limit: int | None, protected=()) -> list:
    """Which of the checkpoint folders ``ordered`` (oldest first) to delete so that at most ``save_total_limit`` are
    left: the oldest first, never the last of ``ordered`` nor one in ``protected``; more are kept when the protected
    ones alone exceed the limit. No limit (``None`` or ≤ 0): nothing."""
    if save_total_limit is None or save_total_limit <= 0 or len(ordered) <= save_total_limit:
        return []
    keep = {_folder_key(p) for p in (*protected, ordered[-1]) if p is not None}
    room = max(save_total_limit, sum(_folder_key(p) in keep for p in ordered))
    victims = []
    for path in ordered:
        if len(ordered) - len(victims) <= room:
            break
        if _folder_key(path) not in keep:
            victims.append(path)
    return victims


def newest_marked_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The ``checkpoint-N`` folder of ``output_dir`` with the highest N that has a :data:`MARKER` (not verified)."""
    marked = [path for _, path in list_checkpoints(output_dir) if (path / MARKER).is_file()]
    return marked[-1] if marked else None


def rotate_checkpoints(
    output_dir,
    save_total_limit: int | None,
    best_model_checkpoint=None,
    use_mtime: bool = False,
    checkpoint_prefix: str = "checkpoint",
    keep=(),
) -> list[str]:
    """Delete old checkpoints of ``output_dir`` as ``Trainer`` does with ``save_total_limit``, in its order (by
    step, or modification time with ``use_mtime``), but never the newest marked checkpoint nor those in ``keep``
    (besides the newest folder and ``best_model_checkpoint``, which ``Trainer`` keeps too). Returns the deleted
    folders. Called after the checkpoint just saved was marked, so a crash at any point leaves a complete one."""
    from transformers.trainer_utils import sort_checkpoints

    if save_total_limit is None or save_total_limit <= 0:
        return []
    ordered = sort_checkpoints(output_dir, checkpoint_prefix, use_mtime)
    protected = (*keep, best_model_checkpoint, newest_marked_checkpoint(output_dir))
    victims = rotation_victims(ordered, save_total_limit, protected)
    for victim in victims:
        logger.info("Deleting older checkpoint %s (save_total_limit=%s)", victim, save_total_limit)
        shutil.rmtree(victim, ignore_errors=True)
    return victims


def _folder_key(path) -> str:
    return os.path.abspath(os.path.normpath(os.fspath(path)))


def warn_all(messages: list[str]) -> None:
    for message in messages:
        logger.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)
