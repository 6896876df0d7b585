"""The files of one checkpoint folder: listing them, hashing them, and checking that each holds what its name says.

Everything here stays inside the folder it is given. A name read from a file (the completion marker of
:mod:`trl_ipo.checkpoints`) is resolved one component at a time with ``lstat``: an absolute name, a ``..`` or ``.``
component, or a symbolic link anywhere on the way is refused before anything outside could be looked at, and files are
opened without following a final symbolic link. Nothing is unpickled: a torch file is only checked for the first bytes
``torch.save`` writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath

_TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = 0x80  # torch.save(..., _use_new_zipfile_serialization=False): a pickle, protocol 2 or later
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit on the JSON header
_CHUNK = 4 << 20


def regular_files(folder: str | os.PathLike, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """``{relative POSIX name: size}`` of every regular file below ``folder``, sorted by name.

    Symbolic links (to files or folders) are neither listed nor followed; top-level names in ``skip`` are left out.
    """
    folder = Path(folder)
    found = {}
    for root, dirs, files in os.walk(folder):  # os.walk does not descend into linked folders
        dirs.sort()
        for name in sorted(files):
            full = Path(root) / name
            info = os.lstat(full)
            relative = full.relative_to(folder).as_posix()
            if stat.S_ISREG(info.st_mode) and relative not in skip:
                found[relative] = info.st_size
    return dict(sorted(found.items()))


def resolve_inside(folder: str | os.PathLike, name) -> tuple[Path | None, os.stat_result | str]:
    """``(path, lstat)`` of the regular file ``name`` inside ``folder``, or ``(None, why not)``.

    ``name`` is a relative POSIX path as :func:`regular_files` writes it. Only ``folder`` and paths below it are
    looked at: a name that is absolute, has an empty, ``.`` or ``..`` component, or a backslash, is refused without
    any file-system call, and the walk stops at the first symbolic link.
    """
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return None, f"{name!r} is not a file name inside the checkpoint folder"
    parts = name.split("/")
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).drive or any(p in ("", ".", "..") for p in parts):
        return None, f"{name!r} is not a file name inside the checkpoint folder"
    current = Path(folder)
    for index, part in enumerate(parts):
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            return None, f"{name} is missing"
        except OSError as err:
            return None, f"{name} cannot be read ({err.strerror})"
        if stat.S_ISLNK(info.st_mode):
            return None, f"{name} is a symbolic link, not the file that was saved"
        if index < len(parts) - 1 and not stat.S_ISDIR(info.st_mode):
            return None, f"{name} is missing"
    if not stat.S_ISREG(info.st_mode):
        return None, f"{name} is not a regular file"
    return current, info


def _open_no_follow(path: Path):
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    return os.fdopen(os.open(path, flags), "rb")


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of the file, read in 4 MiB chunks (memory stays flat whatever the file's size)."""
    digest = hashlib.sha256()
    with _open_no_follow(Path(path)) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_many(paths: list[Path]) -> list[str]:
    """:func:`sha256` of each path, several files at a time (hashlib releases the GIL while it hashes)."""
    if len(paths) <= 1:
        return [sha256(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(paths))) as pool:
        return list(pool.map(sha256, paths))


def content_problem(path: str | os.PathLike) -> str | None:
    """Why the file's content is not what its name promises (``None`` when it is, or when the kind is unknown).

    ``*.json``: parses as JSON. ``*.safetensors``: the 8-byte header length and the JSON header fit the file, and the
    tensors' byte ranges end exactly at its end (a zero-filled or cut-off file fails). ``*.pt``, ``*.pth``, ``*.bin``:
    start as ``torch.save`` writes (a zip archive, or a pickle of protocol 2 or later). Only the header is read, except
    for JSON files, which are parsed whole.
    """
    path = Path(path)
    name = path.name
    try:
        if name.endswith(".json"):
            with _open_no_follow(path) as handle:
                json.loads(handle.read().decode("utf-8"))
        elif name.endswith(".safetensors"):
            why = _safetensors_problem(path)
            return None if why is None else f"{name} is not a valid safetensors file ({why})"
        elif name.endswith(_TORCH_SUFFIXES):
            with _open_no_follow(path) as handle:
                head = handle.read(4)
            if not (head == _ZIP_MAGIC or (len(head) >= 2 and head[0] == _PICKLE_MAGIC)):
                return f"{name} is not a file torch.save wrote (it starts with {head!r})"
    except (UnicodeDecodeError, ValueError) as err:
        return f"{name} is not valid JSON ({err})"
    except OSError as err:
        return f"{name} cannot be read ({err.strerror})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = os.lstat(path).st_size
    with _open_no_follow(path) as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than the 8-byte header length"
        length = int.from_bytes(head, "little")
        if length == 0 or length > _SAFETENSORS_MAX_HEADER or 8 + length > size:
            return f"header length {length} does not fit a file of {size} bytes"
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "its header is not JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            return f"tensor {key!r} has no valid data_offsets"
        end = max(end, offsets[1])
    if 8 + length + end != size:
        return f"its tensors end at byte {8 + length + end} but the file has {size} bytes"
    return None
