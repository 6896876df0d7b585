"""Resuming after a crash, in one process (the two-rank runs are in test_precompute_ranks.py).

A run is trained for 4 steps with a checkpoint every step. A crashed copy of its output folder keeps checkpoints 1–2
and a checkpoint-3 as a save interrupted mid-way leaves it (weights and a cut-off optimizer file, no trainer state).
"""

import json
import os
import shutil
import warnings

import pytest
import torch
from conftest import cpu_args, make_pairs
from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint

from trl_ipo import IPOConfig, IPOTrainer, checkpoints
from trl_ipo.checkpoints import MARKER, inspect_checkpoint, newest_complete_checkpoint, parse_resume_flag
from trl_ipo.run_args import ARGS_RECORD, read_args_record

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = make_pairs(16, seed=5, preference=True)
STEPS = 4


def _trainer(load_model, tokenizer, out, **overrides):
    kw = {**dict(max_steps=STEPS, save_strategy="steps", save_steps=1, preference_column="q"), **overrides}
    return IPOTrainer(
        model=load_model(),
        args=IPOConfig(**cpu_args(out, **kw)),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )


def _losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)

    out = tmp_path_factory.mktemp("resume") / "full"
    trainer = _trainer(load, AutoTokenizer.from_pretrained(tiny_dir), out)
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "loss" in h]
    return out, _losses(trainer), params, tokens


def _crashed_copy(full, dest):
    dest.mkdir()
    for step in (1, 2):
        shutil.copytree(full / f"checkpoint-{step}", dest / f"checkpoint-{step}")
    broken = dest / "checkpoint-3"
    broken.mkdir()
    shutil.copy(full / "checkpoint-3" / "model.safetensors", broken)
    data = (full / "checkpoint-3" / "optimizer.pt").read_bytes()
    (broken / "optimizer.pt").write_bytes(data[: len(data) // 2])
    return dest


@pytest.mark.compat
def test_resume_true_skips_incomplete_checkpoint_and_is_exact(uninterrupted, load_model, tokenizer, tmp_path):
    full, losses, params, full_tokens = uninterrupted
    crashed = _crashed_copy(full, tmp_path / "crashed")
    assert get_last_checkpoint(str(crashed)).endswith("checkpoint-3")  # what Trainer alone would resume from
    assert all((full / f"checkpoint-{s}" / MARKER).is_file() for s in range(1, STEPS + 1))
    trainer = _trainer(load_model, tokenizer, crashed)
    skipped = r"Skipping incomplete checkpoint .*checkpoint-3: trainer_state\.json is missing"
    with pytest.warns(UserWarning, match=skipped):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.resumed_from == str(crashed / "checkpoint-2")
    resumed = _losses(trainer)
    assert sorted(resumed) == [1, 2, 3, 4]  # steps 1-2 come from the checkpoint's trainer state
    assert [resumed[3], resumed[4]] == pytest.approx([losses[3], losses[4]], rel=1e-6)
    tokens = [h["num_tokens"] for h in trainer.state.log_history if "loss" in h]
    assert tokens == full_tokens  # TRL's token count continues from the checkpoint instead of restarting
    assert len({round(v, 6) for v in losses.values()}) == STEPS  # the steps differ: the comparison is not trivial
    for name, value in trainer.model.named_parameters():
        torch.testing.assert_close(value.detach(), params[name], rtol=1e-6, atol=1e-7, msg=name)
    assert inspect_checkpoint(crashed / "checkpoint-3").complete  # saved again, this time completely


def test_explicit_incomplete_checkpoint_is_refused(uninterrupted, load_model, tokenizer, tmp_path):
    crashed = _crashed_copy(uninterrupted[0], tmp_path / "crashed")
    trainer = _trainer(load_model, tokenizer, crashed)
    with pytest.raises(ValueError, match=r"checkpoint-3 is incomplete.*newest complete one there is .*checkpoint-2"):
        trainer.train(resume_from_checkpoint=str(crashed / "checkpoint-3"))
    with pytest.raises(ValueError, match="no complete checkpoint"):
        _trainer(load_model, tokenizer, tmp_path / "empty").train(resume_from_checkpoint=True)


def test_missing_optimizer_state_stops_unless_allowed_then_warns(uninterrupted, load_model, tokenizer, tmp_path):
    out = tmp_path / "no-optim"
    out.mkdir()
    shutil.copytree(uninterrupted[0] / "checkpoint-2", out / "checkpoint-2")
    (out / "checkpoint-2" / "optimizer.pt").unlink()
    (out / "checkpoint-2" / MARKER).unlink()  # as a checkpoint from a stock trainer with the file removed by hand
    with pytest.raises(ValueError, match=r"checkpoint-2 has no optimizer state.*allow_resume_without_optimizer=True"):
        _trainer(load_model, tokenizer, out).train(resume_from_checkpoint=True)
    (out / "checkpoint-2" / "scheduler.pt").unlink()
    with pytest.raises(ValueError, match=r"has no optimizer and scheduler state"):
        _trainer(load_model, tokenizer, out).train(resume_from_checkpoint=str(out / "checkpoint-2"))
    trainer = _trainer(load_model, tokenizer, out, allow_resume_without_optimizer=True, max_steps=3)
    with pytest.warns(UserWarning, match="RESUMING WITHOUT OPTIMIZER AND SCHEDULER STATE"):
        trainer.train(resume_from_checkpoint="true")
    assert trainer.state.global_step == 3


def test_completeness_rules(uninterrupted, tmp_path):
    full = uninterrupted[0]
    run = tmp_path / "run"
    shutil.copytree(full, run)
    assert newest_complete_checkpoint(run)[0].path == str(run / "checkpoint-4")
    # A file changed after the marker was written (here: cut short) makes the checkpoint incomplete.
    weights = run / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    info = inspect_checkpoint(run / "checkpoint-4")
    assert not info.complete
    assert "model.safetensors has 100 bytes" in info.problems[0]
    # No marker while an older checkpoint of the run has one: the save did not finish on every rank.
    (run / "checkpoint-3" / MARKER).unlink()
    best, skipped = newest_complete_checkpoint(run)
    assert best.path == str(run / "checkpoint-2")
    assert [s.step for s in skipped] == [4, 3]
    # Checkpoints of a stock trainer (no markers anywhere): the files Trainer writes decide.
    stock = tmp_path / "stock"
    shutil.copytree(full / "checkpoint-1", stock / "checkpoint-1")
    folder = stock / "checkpoint-1"
    (folder / MARKER).unlink()
    assert inspect_checkpoint(folder).complete
    for name in ("rng_state_0.pth", "rng_state_2.pth"):  # ranks 0 and 2 but not 1
        shutil.copy(folder / "rng_state.pth", folder / name)
    assert "RNG states of ranks [0, 2]" in inspect_checkpoint(folder).problems[0]
    (folder / "rng_state_2.pth").unlink()
    (folder / "trainer_state.json").write_text('{"global_step": 1, "log_hist')
    assert "trainer_state.json is unreadable" in inspect_checkpoint(folder).problems[0]
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    (folder / "latest").write_text("global_step1")
    assert "DeepSpeed 'latest' names 'global_step1'" in inspect_checkpoint(folder).problems[0]
    (folder / "latest").unlink()
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "weight shards missing: model-00002-of-00002.safetensors" in inspect_checkpoint(folder).problems[0]


def test_resume_flag_strings_from_the_command_line():
    assert parse_resume_flag("true") is True
    assert parse_resume_flag("True") is True
    assert parse_resume_flag(True) is True
    assert parse_resume_flag("false") is None
    assert parse_resume_flag(None) is None
    assert parse_resume_flag(False) is None
    assert parse_resume_flag(" out/checkpoint-2 ") == "out/checkpoint-2"


def test_cli_resume_true_skips_the_incomplete_checkpoint(uninterrupted, tiny_dir, tmp_path, capsys):
    from trl_ipo.commands import train as train_cmd

    crashed = _crashed_copy(uninterrupted[0], tmp_path / "crashed")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    argv = [
        "--model_name_or_path",
        tiny_dir,
        "--dataset_name",
        str(data),
        "--output_dir",
        str(crashed),
        "--use_cpu",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--report_to",
        "none",
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--learning_rate",
        "1e-3",
        "--preference_column",
        "q",
        "--resume_from_checkpoint",
        "true",
        "--disable_tqdm",
        "true",
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = train_cmd.main(argv)
    assert rc == 0, capsys.readouterr().err
    assert any("Skipping incomplete checkpoint" in str(w.message) and "checkpoint-3" in str(w.message) for w in caught)
    state = json.loads((crashed / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3]


def test_resume_with_another_world_size_warns(uninterrupted, tmp_path):
    from trl_ipo.checkpoints import resolve_resume

    run = tmp_path / "run"
    shutil.copytree(uninterrupted[0] / "checkpoint-2", run / "checkpoint-2")
    path, messages = resolve_resume(True, run, world_size=1)
    assert path == str(run / "checkpoint-2")
    assert messages == []
    marker = run / "checkpoint-2" / MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "world_size": 2}))
    _, messages = resolve_resume(True, run, world_size=1)
    assert len(messages) == 1
    assert "saved by 2 rank(s) and this run has 1" in messages[0]


def _folders(run):
    return sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-"))


def _assert_same_run(trainer, losses, params, steps):
    resumed = _losses(trainer)
    assert [resumed[s] for s in steps] == pytest.approx([losses[s] for s in steps], rel=1e-6)
    for name, value in trainer.model.named_parameters():
        torch.testing.assert_close(value.detach(), params[name], rtol=1e-6, atol=1e-7, msg=name)


def test_same_size_corruption_falls_back_to_the_previous_complete_checkpoint(
    uninterrupted, load_model, tokenizer, tmp_path
):
    """A same-size broken trainer_state.json and a zero-filled model.safetensors pass a size check; resuming from
    them would die in Trainer with JSONDecodeError / SafetensorError. Both are skipped, each warning naming the file."""
    full, losses, params, _ = uninterrupted
    run = tmp_path / "run"
    shutil.copytree(full, run)
    state = run / "checkpoint-4" / "trainer_state.json"
    state.write_text("#" + state.read_text()[1:])
    weights = run / "checkpoint-3" / "model.safetensors"
    weights.write_bytes(bytes(weights.stat().st_size))
    trainer = _trainer(load_model, tokenizer, run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=True)
    skipped = [str(w.message) for w in caught if "Skipping incomplete checkpoint" in str(w.message)]
    assert len(skipped) == 2
    assert "checkpoint-4: trainer_state.json is not the file that was saved" in skipped[0]
    assert "checkpoint-3: model.safetensors is not the file that was saved" in skipped[1]
    assert all(f"Resuming from {run / 'checkpoint-2'} instead" in m for m in skipped)
    assert trainer.resumed_from == str(run / "checkpoint-2")
    _assert_same_run(trainer, losses, params, [3, 4])


def test_a_crash_before_the_marker_keeps_the_last_complete_checkpoint(
    uninterrupted, load_model, tokenizer, tmp_path, monkeypatch
):
    """With save_total_limit=1, Trainer used to delete checkpoint-1 while saving checkpoint-2, before checkpoint-2 was
    marked complete: a crash then left no complete checkpoint. Now old checkpoints go only after the marker."""
    _, losses, params, _ = uninterrupted
    run = tmp_path / "run"
    write_marker = checkpoints.write_marker

    def crash_at_step_2(folder, step, world_size, **kw):
        if step == 2:
            raise RuntimeError("node lost while marking checkpoint-2")
        write_marker(folder, step, world_size, **kw)

    monkeypatch.setattr(checkpoints, "write_marker", crash_at_step_2)
    with pytest.raises(RuntimeError, match="node lost"):
        _trainer(load_model, tokenizer, run, save_total_limit=1).train()
    monkeypatch.setattr(checkpoints, "write_marker", write_marker)
    assert _folders(run) == ["checkpoint-1", "checkpoint-2"]
    assert inspect_checkpoint(run / "checkpoint-1").complete
    assert not (run / "checkpoint-2" / MARKER).exists()
    trainer = _trainer(load_model, tokenizer, run, save_total_limit=1)
    with pytest.warns(UserWarning, match=r"Skipping incomplete checkpoint .*checkpoint-2: no trl_ipo_checkpoint\.json"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.resumed_from == str(run / "checkpoint-1")
    _assert_same_run(trainer, losses, params, [2, 3, 4])
    assert _folders(run) == ["checkpoint-4"]
    assert inspect_checkpoint(run / "checkpoint-4").complete


def test_rotation_keeps_the_checkpoint_just_marked_despite_a_newer_leftover(load_model, tokenizer, tmp_path):
    """A newer-numbered (and newer by mtime) folder left over from another run: Trainer's rotation keeps only that
    folder and deletes each checkpoint of this run right after saving it. The newest marked one now stays."""
    run = tmp_path / "run"
    leftover = run / "checkpoint-9"
    leftover.mkdir(parents=True)
    (leftover / "notes.txt").write_text("from an earlier run")
    future = leftover.stat().st_mtime + 3600
    os.utime(leftover, (future, future))
    _trainer(load_model, tokenizer, run, save_total_limit=1, max_steps=2).train()
    assert _folders(run) == ["checkpoint-2", "checkpoint-9"]
    assert inspect_checkpoint(run / "checkpoint-2").complete


def test_every_checkpoint_keeps_its_args_record_and_a_changed_loss_setting_warns(
    uninterrupted, load_model, tokenizer, tmp_path
):
    full = uninterrupted[0]
    for step in range(1, STEPS + 1):
        folder = full / f"checkpoint-{step}"
        record = read_args_record(folder)
        assert record["beta"] == 0.1
        assert record["loss_form"] == "paper"
        assert record["preference_column"] == "q"
        assert ARGS_RECORD in json.loads((folder / MARKER).read_text())["files"]  # covered by the marker's hashes
    run = tmp_path / "run"
    shutil.copytree(full / "checkpoint-3", run / "checkpoint-3")
    trainer = _trainer(load_model, tokenizer, run, beta=0.25, loss_form="scaled", symmetric=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=True)
    changed = [str(w.message) for w in caught if "the loss has changed" in str(w.message)]
    folder = run / "checkpoint-3"
    assert [m.split(": the loss")[0] for m in changed] == [
        f"Resuming from {folder} with beta=0.25, but the checkpoint was trained with beta=0.1",
        f"Resuming from {folder} with loss_form='scaled', but the checkpoint was trained with loss_form='paper'",
        f"Resuming from {folder} with symmetric=False, but the checkpoint was trained with symmetric=True",
    ]
    assert read_args_record(run / "checkpoint-4")["beta"] == 0.25  # the new checkpoint records the new setting


def test_checkpoint_methods_live_in_the_mixin():
    from trl_ipo.trainer_checkpoints import CheckpointingMixin

    assert IPOTrainer.__mro__[1] is CheckpointingMixin
    for name in ("train", "_resolve_resume", "_save_checkpoint", "_rotate_checkpoints"):
        assert name in CheckpointingMixin.__dict__
        assert name not in IPOTrainer.__dict__
