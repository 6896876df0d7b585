"""`trl-ipo plot`: PNGs whose curves are the given runs' logged values (checked against the trainer_state.json)."""

import json
import math

import numpy as np
import pytest

from trl_ipo.cli import main as cli_main
from trl_ipo.commands.plot import plot
from trl_ipo.plotting import PANELS, find_state_file

pytestmark = pytest.mark.usefixtures("restore_global_rng")  # Trainer reseeds the global generators


def _ipo_history(beta, steps=4, eval_every=2, seed=0):
    """A log_history shaped like IPOTrainer's: train entries, eval_ entries, and the final summary entry."""
    rng = np.random.default_rng(seed)
    history = []
    for step in range(1, steps + 1):
        delta = float(rng.normal(step * 0.3, 0.1))
        chosen, rejected = float(rng.normal(0.2 * step, 0.05)), float(rng.normal(-0.1 * step, 0.05))
        history.append(
            {
                "loss": (delta - 0.5 / beta) ** 2,
                "grad_norm": 1.0,
                "rewards/chosen": beta * chosen,
                "rewards/rejected": beta * rejected,
                "rewards/accuracies": float(rng.uniform()),
                "rewards/margins": beta * (chosen - rejected),
                "ipo/delta": delta,
                "ipo/target": 0.5 / beta,
                "ipo/residual": delta - 0.5 / beta,
                "ipo/sq_error": (delta - 0.5 / beta) ** 2,
                "epoch": step / steps,
                "step": step,
            }
        )
        if step % eval_every == 0:
            delta = float(rng.normal(step * 0.2, 0.1))
            history.append(
                {
                    "eval_loss": (delta - 0.5 / beta) ** 2,
                    "eval_rewards/chosen": beta * 0.1 * step,
                    "eval_rewards/rejected": -beta * 0.1 * step,
                    "eval_rewards/accuracies": 0.5 + 0.1 * step,
                    "eval_rewards/margins": beta * 0.2 * step,
                    "eval_ipo/delta": delta,
                    "eval_ipo/target": 0.5 / beta,
                    "eval_ipo/residual": delta - 0.5 / beta,
                    "epoch": step / steps,
                    "step": step,
                }
            )
    history.append({"train_runtime": 1.0, "train_loss": 1.0, "epoch": 1.0, "step": steps})
    return history


def _dpo_history(steps=3):
    """A stock DPOTrainer log_history: TRL's keys only, no ipo/*."""
    return [
        {
            "loss": 0.69 - 0.01 * s,
            "rewards/chosen": 0.01 * s,
            "rewards/rejected": -0.01 * s,
            "rewards/accuracies": 0.5,
            "rewards/margins": 0.02 * s,
            "epoch": s / steps,
            "step": s,
        }
        for s in range(1, steps + 1)
    ]


def _write_run(folder, history):
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": history[-1]["step"], "log_history": history}))
    return folder


def _expected(history, key):
    return [float(e["step"]) for e in history if key in e], [float(e[key]) for e in history if key in e]


def _is_nonblank_png(path):
    import matplotlib.image as mpimg

    assert path.stat().st_size > 1000
    pixels = mpimg.imread(path)
    return pixels.ndim == 3 and pixels.shape[0] > 100 and float(pixels.std()) > 0.01


def test_plot_draws_each_runs_logged_values(tmp_path):
    ipo_a = _write_run(tmp_path / "ipo_beta0.1", _ipo_history(0.1, seed=1))
    ipo_b = _write_run(tmp_path / "ipo_beta0.5", _ipo_history(0.5, seed=2))
    dpo = _write_run(tmp_path / "dpo", _dpo_history())
    result = plot([ipo_a, ipo_b, dpo], tmp_path / "png", betas=[0.1, 0.5, 0.1])

    assert sorted(p.name for p in result.files) == sorted(p.filename for p in PANELS)
    for path in result.files:
        assert _is_nonblank_png(path), path

    for run, beta in ((ipo_a, 0.1), (ipo_b, 0.5)):
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        label = run.name
        for split, prefix in (("train", ""), ("eval", "eval_")):
            assert result.series[("margin.png", split, label, "Δ")] == _expected(history, f"{prefix}ipo/delta")
            assert result.series[("margin.png", split, label, "target")] == _expected(history, f"{prefix}ipo/target")
            assert result.series[("residual.png", split, label, "residual")] == _expected(
                history, f"{prefix}ipo/residual"
            )
            assert result.series[("loss.png", split, label, "loss")] == _expected(history, f"{prefix}loss")
            assert result.series[("reward_accuracy.png", split, label, "accuracy")] == _expected(
                history, f"{prefix}rewards/accuracies"
            )
            # log-ratio panel: TRL's rewards are β·ρ, the plot shows ρ = reward / β
            steps, rewards = _expected(history, f"{prefix}rewards/chosen")
            drawn_steps, drawn = result.series[("logratios.png", split, label, "chosen")]
            assert drawn_steps == steps
            assert drawn == pytest.approx([r / beta for r in rewards], rel=1e-12)
        # the train loss curve has one point per logging step, not the final summary entry
        assert result.series[("loss.png", "train", label, "loss")][0] == [1.0, 2.0, 3.0, 4.0]

    # the DPO run: drawn where it has the keys, listed as skipped where it has not
    dpo_history = json.loads((dpo / "trainer_state.json").read_text())["log_history"]
    assert result.series[("loss.png", "train", "dpo", "loss")] == _expected(dpo_history, "loss")
    assert ("margin.png", "train", "dpo", "Δ") not in result.series
    assert "dpo: margin.png (train) has no ipo/delta" in result.skipped


def test_plot_cli_and_run_folder_forms(tmp_path, capsys):
    history = _ipo_history(0.2, steps=3, eval_every=3)
    run = tmp_path / "out"
    _write_run(run / "checkpoint-2", history[:2])
    _write_run(run / "checkpoint-10", history)  # the latest checkpoint (numeric order, not string order)
    assert find_state_file(run) == run / "checkpoint-10" / "trainer_state.json"

    out = tmp_path / "png"
    argv = ["plot", str(run), "--out", str(out), "--label", "ipo", "--panel", "loss", "--panel", "margin"]
    assert cli_main(argv) == 0
    assert sorted(capsys.readouterr().out.split()) == [str(out / "loss.png"), str(out / "margin.png")]
    assert sorted(p.name for p in out.iterdir()) == ["loss.png", "margin.png"]

    # β unknown: the log-ratio panel shows the rewards themselves, and its axis says so
    result = plot([run / "checkpoint-10" / "trainer_state.json"], tmp_path / "png2", panels=["logratios"])
    assert [p.name for p in result.files] == ["logratios.png"]
    steps, drawn = result.series[("logratios.png", "train", "checkpoint-10", "chosen")]
    assert drawn == _expected(history, "rewards/chosen")[1]
    assert all(math.isfinite(v) for v in drawn)

    assert cli_main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "No trainer_state.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot([run], tmp_path / "y", labels=["a", "b"])
    with pytest.raises(ValueError, match="Unknown panel"):
        plot([run], tmp_path / "y", panels=["margins"])


class _RunsCodeWhenUnpickled:
    """A pickle payload that, when loaded, writes a marker file (as a hostile ``training_args.bin`` could)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_plot_never_unpickles_training_args_bin(tmp_path, capsys):
    import torch

    run = _write_run(tmp_path / "run", _ipo_history(0.2, steps=2, eval_every=2))
    marker = tmp_path / "code-ran"
    torch.save(_RunsCodeWhenUnpickled(marker), run / "training_args.bin")

    result = plot([run], tmp_path / "png", panels=["logratios"])
    assert cli_main(["plot", str(run), "--out", str(tmp_path / "png2")]) == 0
    capsys.readouterr()
    assert not marker.exists()  # the pickle was never loaded
    # β unknown (no JSON record): the panel draws the rewards β·ρ themselves, not ρ
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert result.series[("logratios.png", "train", "run", "chosen")][1] == _expected(history, "rewards/chosen")[1]

    # β comes from the JSON record only; a malformed record means "unknown", never an error or a guess
    for record, expected_scale in (({"beta": 0.2}, 1 / 0.2), ({"beta": "0.2"}, 1.0), ({"beta": float("inf")}, 1.0)):
        (run / "training_args.json").write_text(json.dumps(record))
        result = plot([run], tmp_path / "png3", panels=["logratios"])
        drawn = result.series[("logratios.png", "train", "run", "chosen")][1]
        assert drawn == pytest.approx([r * expected_scale for r in _expected(history, "rewards/chosen")[1]])
    (run / "training_args.json").write_text("{not json")
    result = plot([run], tmp_path / "png4", panels=["logratios"])
    assert result.series[("logratios.png", "train", "run", "chosen")][1] == _expected(history, "rewards/chosen")[1]


def test_trainer_writes_a_json_args_record_without_secrets(tmp_path, load_model, tokenizer):
    from conftest import cpu_args, make_pairs
    from datasets import Dataset

    from trl_ipo import IPOConfig, IPOTrainer
    from trl_ipo.run_args import read_args_record, recorded_beta

    args = IPOConfig(**cpu_args(tmp_path / "out", max_steps=2, save_strategy="steps", save_steps=2, beta=0.3))
    args.hub_token = "hf_secret_value_123"
    trainer = IPOTrainer(
        model=load_model(), args=args, train_dataset=Dataset.from_list(make_pairs(8)), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model()
    for folder in (tmp_path / "out", tmp_path / "out" / "checkpoint-2"):
        text = (folder / "training_args.json").read_text()
        assert "hf_secret_value_123" not in text
        record = read_args_record(folder)
        assert record["beta"] == 0.3
        assert record["loss_form"] == "paper"
        assert record["hub_token"] != args.hub_token
        assert recorded_beta(folder) == 0.3
    result = plot([tmp_path / "out"], tmp_path / "png", panels=["logratios"])
    history = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    drawn = result.series[("logratios.png", "train", "out", "chosen")][1]
    assert drawn == pytest.approx([r / 0.3 for r in _expected(history, "rewards/chosen")[1]])


# ------------------------------------------------------------------------------------------ hostile run folders
def _plot_error(capsys, argv):
    rc = cli_main(["plot", *map(str, argv)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1, err
    assert err.startswith("trl-ipo plot: error: "), err
    return err.strip()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[1, 2]", "holds a JSON list, not a Trainer state"),
        ('{"log_history": {"step": 1}}', "log_history must be a list of log entries, got a dict"),
        ('{"log_history": [1, 2]}', "log_history entry 0 must be a mapping, got int 1"),
        ('{"log_history": [{"step": 1, "loss": [0.5]}]}', "log_history entry 0, key 'loss' must be a number, got list"),
        ('{"log_history": [{"step": "one", "loss": 0.5}]}', "entry 0, key 'step' must be a number, got str 'one'"),
        ('{"log_history": [{"step": 1, "loss": true}]}', "entry 0, key 'loss' must be a number, got bool True"),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, "the JSON nests too deeply"),
        ("[" * 100_000 + "]" * 100_000, "the JSON nests too deeply"),
        ("{not json", "is not a JSON file"),
        ('{"global_step": 1}', "has no log_history"),
    ],
)
def test_malformed_state_files_are_one_line_naming_the_file(tmp_path, capsys, content, expected):
    state = tmp_path / "run" / "trainer_state.json"
    state.parent.mkdir()
    state.write_text(content)
    line = _plot_error(capsys, [state.parent, "--out", tmp_path / "png"])
    assert str(state) in line
    assert expected in line
    assert not (tmp_path / "png").exists()  # nothing written


def test_oversized_state_file_is_refused_unread(tmp_path, capsys, monkeypatch):
    from trl_ipo import plotting

    run = _write_run(tmp_path / "run", _ipo_history(0.2, steps=2))
    monkeypatch.setattr(plotting, "MAX_STATE_BYTES", 100)
    monkeypatch.setattr(plotting.Path, "read_bytes", lambda self: pytest.fail(f"{self} was read"))
    line = _plot_error(capsys, [run, "--out", tmp_path / "png"])
    assert str(run / "trainer_state.json") in line
    assert "MAX_STATE_BYTES" in line


def test_shipped_state_size_limit():
    from trl_ipo.plotting import MAX_STATE_BYTES

    assert MAX_STATE_BYTES == 64 * 2**20


@pytest.mark.parametrize("beta", ["nan", "-0.1", "0", "inf"])
def test_bad_beta_is_one_line(tmp_path, capsys, beta):
    run = _write_run(tmp_path / "run", _ipo_history(0.2, steps=2))
    line = _plot_error(capsys, [run, "--out", tmp_path / "png", f"--beta={beta}"])
    assert "--beta" in line
    assert "must be a finite number > 0" in line
    with pytest.raises(ValueError, match="betas\\[0\\]"):
        plot([run], tmp_path / "png", betas=[float(beta)])


def test_out_naming_a_file_and_repeated_flags_are_one_line(tmp_path, capsys):
    run = _write_run(tmp_path / "run", _ipo_history(0.2, steps=2))
    existing = tmp_path / "existing.png"
    existing.write_text("keep me")
    line = _plot_error(capsys, [run, "--out", existing])
    assert f"--out '{existing}' is an existing file" in line
    assert existing.read_text() == "keep me"
    line = _plot_error(capsys, [run, "--out", tmp_path / "a", "--out", tmp_path / "b"])
    assert "--out is given 2 times" in line
    line = _plot_error(capsys, [run])  # argparse's own errors are one line too
    assert "--out" in line


def test_a_symlink_planted_in_out_is_replaced_not_written_through(tmp_path, capsys):
    run = _write_run(tmp_path / "run", _ipo_history(0.2, steps=2))
    out = tmp_path / "png"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "loss.png").symlink_to(victim)
    assert cli_main(["plot", str(run), "--out", str(out), "--panel", "loss"]) == 0
    capsys.readouterr()
    assert victim.read_text() == "precious"
    assert not (out / "loss.png").is_symlink()
    assert _is_nonblank_png(out / "loss.png")
    assert sorted(p.name for p in out.iterdir()) == ["loss.png"]  # no temporary file left behind
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "png-link").symlink_to(elsewhere)  # --out itself a link: refused, nothing written where it points
    line = _plot_error(capsys, [run, "--out", tmp_path / "png-link"])
    assert f"--out '{tmp_path / 'png-link'}' is a symbolic link" in line
    assert list(elsewhere.iterdir()) == []


def test_each_checkpoint_is_scaled_by_its_own_recorded_beta(tmp_path):
    """An old checkpoint (β = 0.5) in a folder whose newer run recorded β = 0.1 keeps its own β."""
    history = _ipo_history(0.5, steps=2)
    run = tmp_path / "out"
    old = _write_run(run / "checkpoint-2", history)
    (old / "training_args.json").write_text(json.dumps({"beta": 0.5}))
    (run / "training_args.json").write_text(json.dumps({"beta": 0.1}))  # a later run in the same output_dir
    expected = [r / 0.5 for r in _expected(history, "rewards/chosen")[1]]
    result = plot([run], tmp_path / "png", panels=["logratios"])
    assert result.series[("logratios.png", "train", "out", "chosen")][1] == pytest.approx(expected)
    (old / "training_args.json").unlink()  # no record of its own: β unknown, rewards drawn unscaled
    result = plot([run], tmp_path / "png", panels=["logratios"])
    assert result.series[("logratios.png", "train", "out", "chosen")][1] == _expected(history, "rewards/chosen")[1]


def test_hostile_args_records_mean_beta_unknown(tmp_path, monkeypatch):
    from trl_ipo import run_args

    run = _write_run(tmp_path / "run", _ipo_history(0.2, steps=2))
    (run / "training_args.json").write_text('{"beta": ' * 100_000 + "0.2" + "}" * 100_000)
    assert run_args.recorded_beta(run) is None  # nesting: no RecursionError escapes
    (run / "training_args.json").write_text(json.dumps({"beta": 0.2}))
    assert run_args.recorded_beta(run) == 0.2
    monkeypatch.setattr(run_args, "MAX_RECORD_BYTES", 5)
    assert run_args.recorded_beta(run) is None  # too large: not read
