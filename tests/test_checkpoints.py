"""Completeness of hand-built checkpoint folders, the marker's hashes and names, rotation and the setting check.

No training here: the folders hold the files ``Trainer`` writes (a real safetensors file, ``torch.save`` files, JSON),
built in a few milliseconds. Trainer runs that rely on the same rules are in test_resume.py.
"""

import builtins
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trl_ipo import _compat
from trl_ipo.checkpoint_files import content_problem, resolve_inside
from trl_ipo.checkpoints import (
    HASH_ENV,
    MARKER,
    inspect_checkpoint,
    loss_settings,
    resolve_resume,
    rotate_checkpoints,
    rotation_victims,
    setting_changes,
    write_marker,
)
from trl_ipo.config import IPOConfig
from trl_ipo.errors import InputError
from trl_ipo.run_args import write_args_record


def build_checkpoint(folder: Path, step: int) -> Path:
    """A checkpoint as ``Trainer`` leaves it in one process, with a DeepSpeed-like subfolder for the nested names."""
    folder.mkdir(parents=True)
    save_file(
        {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)}, folder / "model.safetensors"
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": [{"loss": 0.25}]}))
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.zeros(2), "name": name}, folder / name)
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.json").write_text("[1, 2, 3]")
    return folder


def marker_files(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())["files"]


def set_marker_files(folder: Path, files: dict) -> None:
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({**marker, "files": files}))


def test_marker_records_every_regular_file_with_its_size_and_sha256(tmp_path):
    folder = build_checkpoint(tmp_path / "checkpoint-3", 3)
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the checkpoint")
    (folder / "link.txt").symlink_to(outside)  # a link is neither listed nor followed
    write_marker(folder, 3, world_size=2)
    marker = json.loads((folder / MARKER).read_text())
    assert (marker["format"], marker["global_step"], marker["world_size"]) == (2, 3, 2)
    expected = {}
    for name in ("config.json", "extra/notes.json", "model.safetensors", "optimizer.pt", "rng_state.pth"):
        data = (folder / name).read_bytes()
        expected[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for name in ("scheduler.pt", "trainer_state.json"):
        data = (folder / name).read_bytes()
        expected[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert marker["files"] == expected
    assert inspect_checkpoint(folder).complete
    assert not any(p.name.endswith(".partial") for p in folder.iterdir())


def test_same_size_changes_are_caught_by_the_hashes(tmp_path):
    folder = build_checkpoint(tmp_path / "checkpoint-1", 1)
    write_marker(folder, 1, 1)
    state = (folder / "trainer_state.json").read_bytes()
    (folder / "trainer_state.json").write_bytes(state.replace(b"0.25", b"0.75"))  # still valid JSON, same size
    info = inspect_checkpoint(folder)
    assert not info.complete
    assert info.problems == [
        "trainer_state.json is not the file that was saved (its SHA-256 differs from the recorded one)"
    ]
    (folder / "trainer_state.json").write_bytes(state)
    weights = folder / "model.safetensors"
    weights.write_bytes(bytes(weights.stat().st_size))  # zero-filled, same size
    assert inspect_checkpoint(folder).problems == [
        "model.safetensors is not the file that was saved (its SHA-256 differs from the recorded one)"
    ]


def test_file_headers_are_checked_without_hashes(tmp_path, monkeypatch):
    """A size-only marker (hashing off, or written before hashes existed) and an unmarked folder still fail on a
    zero-filled safetensors file, a same-size broken JSON file and a zero-filled torch file, naming the file."""
    monkeypatch.setenv(HASH_ENV, "none")
    folder = build_checkpoint(tmp_path / "checkpoint-2", 2)
    write_marker(folder, 2, 1)
    assert all(set(entry) == {"size"} for entry in marker_files(folder).values())
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(bytes(len(good)))
    assert inspect_checkpoint(folder).problems == [
        f"model.safetensors is not a valid safetensors file (header length 0 does not fit a file of {len(good)} bytes)"
    ]
    weights.write_bytes(good)
    state = (folder / "trainer_state.json").read_text()
    (folder / "trainer_state.json").write_text("x" + state[1:])
    problem = inspect_checkpoint(folder).problems[0]
    assert problem.startswith("trainer_state.json is unreadable (Expecting value: line 1 column 1")
    (folder / "trainer_state.json").write_text(state)
    # The same checks for a folder without a marker (a stock trainer's checkpoint).
    (folder / MARKER).unlink()
    optimizer = folder / "optimizer.pt"
    optimizer.write_bytes(bytes(optimizer.stat().st_size))
    assert inspect_checkpoint(folder).problems == [
        "optimizer.pt is not a file torch.save wrote (it starts with b'\\x00\\x00\\x00\\x00')"
    ]
    torch.save({}, optimizer)
    (folder / "config.json").write_text('{"model_type": "qwen2", "hidden_size": 8')
    assert inspect_checkpoint(folder).problems[0].startswith("config.json is not valid JSON (Expecting ',' delimiter")


def test_safetensors_header_rules(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(2, 2)}, path)
    data = path.read_bytes()
    assert content_problem(path) is None
    header_length = int.from_bytes(data[:8], "little")
    tensor_bytes = 4 * 4 + 4 * 4  # two float32 tensors of 4 elements
    assert len(data) == 8 + header_length + tensor_bytes  # the rule checked below, computed independently
    path.write_bytes(data[:-1])
    assert "its tensors end at byte" in content_problem(path)
    assert f"file has {len(data) - 1} bytes" in content_problem(path)
    path.write_bytes(data + b"\0")
    assert f"end at byte {len(data)} but the file has {len(data) + 1} bytes" in content_problem(path)
    path.write_bytes(data[:5])
    assert "shorter than the 8-byte header length" in content_problem(path)
    path.write_bytes((2**40).to_bytes(8, "little") + data[8:])
    assert "header length 1099511627776 does not fit" in content_problem(path)
    path.write_bytes(data[:8] + b"\xff" * header_length + data[8 + header_length :])
    assert content_problem(path) == "model.safetensors is not a valid safetensors file (its header is not JSON)"


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "../secret/key.txt",
        "sub/../../secret/key.txt",
        "./config.json",
        "sub//x",
        "C:\\secret\\key.txt",
        "..\\secret\\key.txt",
        "",
    ],
)
def test_marker_names_outside_the_folder_are_refused_without_looking(tmp_path, monkeypatch, name):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_text("0123456789")
    folder = build_checkpoint(tmp_path / "run" / "checkpoint-1", 1)
    write_marker(folder, 1, 1)
    files = marker_files(folder)
    set_marker_files(folder, {**files, name: {"size": 10}})
    touched = _record_file_access(monkeypatch)
    info = inspect_checkpoint(folder, require_marker=False)
    assert not info.complete
    assert info.problems == [f"{name!r} is not a file name inside the checkpoint folder ({MARKER} lists it)"]
    outside = [p for p in touched if not p.startswith(str(folder))]
    assert outside == [], outside
    assert "bytes" not in " ".join(info.problems)  # no size of a file outside is shown


def test_symbolic_links_in_the_marker_make_the_checkpoint_incomplete(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.txt").write_bytes(b"x" * 10)
    folder = build_checkpoint(tmp_path / "run" / "checkpoint-1", 1)
    write_marker(folder, 1, 1)
    (folder / "key.txt").symlink_to(secret / "key.txt")  # a file link leading out
    (folder / "leak").symlink_to(secret, target_is_directory=True)  # a folder link leading out
    set_marker_files(folder, {**marker_files(folder), "key.txt": {"size": 10}, "leak/key.txt": {"size": 10}})
    touched = _record_file_access(monkeypatch)
    assert inspect_checkpoint(folder).problems == [
        f"key.txt is a symbolic link, not the file that was saved ({MARKER} lists it)",
        f"leak/key.txt is a symbolic link, not the file that was saved ({MARKER} lists it)",
    ]
    assert not [p for p in touched if "secret" in p]
    assert resolve_inside(folder, "config.json")[0] == folder / "config.json"
    assert resolve_inside(folder, "extra")[1] == "extra is not a regular file"
    assert resolve_inside(folder, "config.json/x")[1] == "config.json/x is missing"


def _record_file_access(monkeypatch) -> list[str]:
    """Patch the calls that look at a path (stat, lstat, open, listing) to record the absolute paths they get."""
    touched = []

    def recorder(original):
        def wrapped(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)):
                touched.append(os.path.abspath(os.fspath(path)))
            return original(path, *args, **kwargs)

        return wrapped

    for module, name in ((os, "stat"), (os, "lstat"), (os, "open"), (os, "listdir"), (os, "scandir")):
        monkeypatch.setattr(module, name, recorder(getattr(module, name)))
    monkeypatch.setattr(io, "open", recorder(io.open))
    monkeypatch.setattr(builtins, "open", recorder(builtins.open))
    return touched


def test_a_marker_with_no_files_or_bad_entries_is_incomplete(tmp_path):
    folder = build_checkpoint(tmp_path / "checkpoint-1", 1)
    write_marker(folder, 1, 1)
    files = marker_files(folder)
    set_marker_files(folder, {})
    assert inspect_checkpoint(folder).problems == [f"{MARKER} lists no files"]
    set_marker_files(folder, [])
    assert inspect_checkpoint(folder).problems == [f"{MARKER} is unreadable"]
    set_marker_files(folder, {**files, "config.json": {"size": True}, "scheduler.pt": {"size": 3, "sha256": "zz"}})
    assert inspect_checkpoint(folder).problems == [
        f"{MARKER} records no valid size for 'config.json'",
        f"{MARKER} records no valid size for 'scheduler.pt'",
    ]
    # A marker of the first format (sizes only) is still read.
    set_marker_files(folder, {name: entry["size"] for name, entry in files.items()})
    assert inspect_checkpoint(folder).complete


def test_hashing_can_be_switched_off_and_a_bad_value_is_named(tmp_path, monkeypatch):
    from trl_ipo.checkpoints import hashing_enabled

    monkeypatch.setenv(HASH_ENV, "md5")
    with pytest.raises(InputError, match=f"{HASH_ENV}='md5'"):
        hashing_enabled()
    monkeypatch.setenv(HASH_ENV, "none")
    assert hashing_enabled() is False
    monkeypatch.delenv(HASH_ENV)
    assert hashing_enabled() is True


# -------------------------------------------------------------------------------------------------------- rotation
def _run_of(tmp_path, steps, marked=()):
    run = tmp_path / "run"
    for step in steps:
        folder = build_checkpoint(run / f"checkpoint-{step}", step)
        if step in marked:
            write_marker(folder, step, 1)
    return run


def _left(run):
    return sorted(int(p.name.split("-")[1]) for p in run.iterdir())


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_rotation_without_markers_deletes_what_transformers_deletes(tmp_path, limit):
    from transformers.trainer_utils import rotate_checkpoints as stock_rotate

    stock = _run_of(tmp_path / "a", [1, 2, 3, 4, 10])
    ours = _run_of(tmp_path / "b", [1, 2, 3, 4, 10])
    stock_rotate(str(stock), save_total_limit=limit, best_model_checkpoint=str(stock / "checkpoint-2"))
    rotate_checkpoints(str(ours), limit, best_model_checkpoint=str(ours / "checkpoint-2"))
    assert _left(ours) == _left(stock)


def test_rotation_never_deletes_the_newest_marked_checkpoint(tmp_path):
    from transformers.trainer_utils import rotate_checkpoints as stock_rotate

    # checkpoint-9: a folder left over from an earlier run (unmarked); checkpoints 1-3 of this run are marked.
    stock = _run_of(tmp_path / "a", [1, 2, 3, 9], marked=(1, 2, 3))
    ours = _run_of(tmp_path / "b", [1, 2, 3, 9], marked=(1, 2, 3))
    stock_rotate(str(stock), save_total_limit=1)
    assert _left(stock) == [9]  # transformers keeps only the newest folder: no complete checkpoint is left
    assert rotate_checkpoints(str(ours), 1) == [str(ours / "checkpoint-1"), str(ours / "checkpoint-2")]
    assert _left(ours) == [3, 9]
    assert inspect_checkpoint(ours / "checkpoint-3").complete


def test_rotation_victims_by_hand():
    ordered = ["c1", "c2", "c3", "c4", "c5"]
    assert rotation_victims(ordered, None) == []
    assert rotation_victims(ordered, 0) == []
    assert rotation_victims(ordered, 5) == []
    assert rotation_victims(ordered, 2) == ["c1", "c2", "c3"]
    assert rotation_victims(ordered, 2, protected=["c2"]) == ["c1", "c3", "c4"]
    assert rotation_victims(ordered, 1, protected=["c2", "c3"]) == ["c1", "c4"]  # 3 protected: 3 are kept
    assert rotation_victims(ordered, 2, protected=[None, "elsewhere"]) == ["c1", "c2", "c3"]


def test_rotation_inside_a_save_is_recorded_not_done(tmp_path):
    import transformers.trainer as hf_trainer

    run = _run_of(tmp_path, [1, 2, 3])
    with _compat.deferred_checkpoint_rotation() as calls:
        hf_trainer.rotate_checkpoints(
            output_dir=str(run), save_total_limit=1, best_model_checkpoint=None, use_mtime=True
        )
    assert _left(run) == [1, 2, 3]
    assert calls == [
        {
            "output_dir": str(run),
            "save_total_limit": 1,
            "best_model_checkpoint": None,
            "use_mtime": True,
            "checkpoint_prefix": "checkpoint",
        }
    ]
    assert _compat.rotation_hook_installed()
    hf_trainer.rotate_checkpoints(output_dir=str(run), save_total_limit=2)  # outside the block: done as before
    assert _left(run) == [2, 3]


# ---------------------------------------------------------------------------------------------- setting changes
IPO_SETTINGS = [
    ("beta", 0.3),
    ("loss_form", "scaled"),
    ("logp_reduction", "sum"),
    ("symmetric", False),
    ("preference_column", "q"),
]


@pytest.mark.parametrize(("name", "value"), IPO_SETTINGS)
def test_a_changed_loss_setting_is_named_with_both_values(tmp_path, name, value):
    saved = IPOConfig(output_dir=str(tmp_path), beta=0.1, report_to="none")
    folder = tmp_path / "checkpoint-1"
    write_args_record(saved, folder)
    before = getattr(saved, name)
    assert setting_changes(folder, loss_settings(saved)) == []
    changed = IPOConfig(output_dir=str(tmp_path), report_to="none", **{"beta": 0.1, name: value})
    messages = setting_changes(folder, loss_settings(changed))
    assert messages == [
        f"Resuming from {folder} with {name}={value!r}, but the checkpoint was trained with {name}={before!r}: the "
        "loss has changed, so the resumed run does not continue the objective the checkpoint was trained on."
    ]


def test_resolve_resume_reports_setting_changes_and_skips_a_corrupt_checkpoint(tmp_path):
    run = _run_of(tmp_path, [1, 2], marked=(1, 2))
    saved = IPOConfig(output_dir=str(run), beta=0.1, report_to="none")
    for step in (1, 2):
        write_args_record(saved, run / f"checkpoint-{step}")
    weights = run / "checkpoint-2" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-4] + torch.tensor([7.0]).numpy().tobytes())  # one weight changed: same size, valid
    assert content_problem(weights) is None
    changed = loss_settings(IPOConfig(output_dir=str(run), beta=0.2, report_to="none"))
    path, messages = resolve_resume(True, run, settings=changed)
    assert path == str(run / "checkpoint-1")
    assert len(messages) == 2
    assert messages[0].startswith(f"Skipping incomplete checkpoint {run / 'checkpoint-2'}: model.safetensors is not")
    assert f"Resuming from {run / 'checkpoint-1'} instead" in messages[0]
    assert "with beta=0.2, but the checkpoint was trained with beta=0.1" in messages[1]
