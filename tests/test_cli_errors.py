"""The CLI's error contract: every user error is one line on stderr naming the file, line, field or row; exit 2."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import make_pairs

from trl_ipo.cli import main as trl_ipo_main
from trl_ipo.commands import compare
from trl_ipo.commands import train as train_cmd

ROWS = make_pairs(8, seed=2)
CPU = ["--use_cpu", "--bf16", "false", "--report_to", "none", "--disable_tqdm", "true"]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def error_line(capsys, rc, prog="trl-ipo train"):
    """The error line (after any progress bars `datasets` draws on stderr), checked to be the only one."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert err.count("error:") == 1, err
    line = err.rstrip("\n").splitlines()[-1]
    assert line.startswith(f"{prog}: error: "), err
    return line


def train(tiny_dir, dataset, out, *extra):
    return train_cmd.main(
        [
            "--model_name_or_path",
            tiny_dir,
            "--dataset_name",
            str(dataset),
            "--output_dir",
            str(out),
            *CPU,
            *[str(e) for e in extra],
        ]
    )


# ------------------------------------------------------------------------------------------------------ data files
def test_malformed_jsonl_line_names_file_and_line(tiny_dir, tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    lines[2] = lines[2][:-1]  # the closing brace lost
    path.write_text("\n".join(lines) + "\n")
    line = error_line(capsys, train(tiny_dir, path, tmp_path / "out"))
    assert f"Dataset file '{path}': line 3 is not valid JSON" in line

    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps([ROWS[1]]) + "\n")
    line = error_line(capsys, train(tiny_dir, path, tmp_path / "out"))
    assert f"Dataset file '{path}': line 2 holds a JSON list" in line


def test_malformed_json_array_names_the_line(tiny_dir, tmp_path, capsys):
    path = tmp_path / "pairs.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in ROWS[:3]) + ",\n]\n")  # trailing comma on line 4
    line = error_line(capsys, train(tiny_dir, path, tmp_path / "out"))
    assert f"Dataset file '{path}': line 5 is not valid JSON" in line


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet", ".json"])
def test_empty_data_file(tiny_dir, tmp_path, capsys, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_text("")
    line = error_line(capsys, train(tiny_dir, path, tmp_path / "out"))
    assert f"Dataset file '{path}' is empty." in line


def test_blank_lines_only(tiny_dir, tmp_path, capsys):
    path = tmp_path / "blank.jsonl"
    path.write_text("\n  \n")
    line = error_line(capsys, train(tiny_dir, path, tmp_path / "out"))
    assert f"Dataset file '{path}' has no rows" in line


def test_bad_rows_through_the_cli(tiny_dir, tmp_path, capsys):
    rows = [dict(r) for r in ROWS]
    del rows[5]["rejected"]  # JSON Lines: a key missing on one line reads as null
    line = error_line(capsys, train(tiny_dir, jsonl(tmp_path / "a.jsonl", rows), tmp_path / "out"))
    assert "column 'rejected', row 5 of the train (split 'train') dataset holds NoneType None" in line

    rows = [{**r, "chosen": [{"content": r["chosen"]}]} for r in ROWS]
    line = error_line(capsys, train(tiny_dir, jsonl(tmp_path / "b.jsonl", rows), tmp_path / "out"))
    assert "message 0 of column 'chosen', row 0 of the train (split 'train') dataset has no 'role'" in line

    chat = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        }
        for r in ROWS
    ]
    line = error_line(
        capsys, train(tiny_dir, jsonl(tmp_path / "c.jsonl", chat[:4] + ROWS[4:5] + chat[5:]), tmp_path / "out")
    )
    assert "row 4 of the train (split 'train') dataset is plain but row 0 is conversational" in line


# ------------------------------------------------------------------------------------------------------- YAML types
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("learning_rate", [1e-3, 1e-4], "field 'learning_rate' must be a number, got list [0.001, 0.0001]"),
        ("beta", [0.1], "field 'beta' must be a number, got list [0.1]"),
        ("max_steps", 1.5, "field 'max_steps' must be a whole number, got float 1.5"),
        ("bf16", [False], "field 'bf16' must be true or false, got list [False]"),
        ("loss_weights", [1, "high"], "field 'loss_weights' must be a number (one per list item), got str 'high'"),
    ],
)
def test_yaml_value_of_the_wrong_type(tiny_dir, tmp_path, capsys, field, value, expected):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": tiny_dir, "output_dir": str(tmp_path), field: value}))
    line = error_line(capsys, train_cmd.main(["--config", str(config)]))
    assert f"config file '{config}': {expected}" in line


# ------------------------------------------------------------------------------------------------ output, resume
def test_output_folder_that_cannot_be_written(tiny_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = jsonl(tmp_path / "pairs.jsonl", ROWS)
    line = error_line(capsys, train(tiny_dir, data, blocker / "out"))
    assert f"--output_dir '{blocker / 'out'}' cannot be written" in line


def test_resume_from_checkpoint_flag_is_checked_before_training(tiny_dir, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", ROWS)
    out = tmp_path / "out"
    line = error_line(capsys, train(tiny_dir, data, out, "--resume_from_checkpoint", "true"))
    assert f"--resume_from_checkpoint true: there is no complete checkpoint-* folder in --output_dir '{out}'" in line

    line = error_line(capsys, train(tiny_dir, data, out, "--resume_from_checkpoint", tmp_path / "checkpoint-9"))
    assert f"--resume_from_checkpoint '{tmp_path / 'checkpoint-9'}': checkpoint folder not found" in line

    for step in (2, 10, 4):  # folders without a trainer state: interrupted saves, none to resume from
        (out / f"checkpoint-{step}").mkdir(parents=True)
    line = error_line(capsys, train(tiny_dir, data, out, "--resume_from_checkpoint", "true"))
    assert line.endswith("to resume from (3 incomplete)")
    assert "--output_dir" in line
    line = error_line(capsys, train(tiny_dir, data, out, "--resume_from_checkpoint", out / "checkpoint-4"))
    assert f"--resume_from_checkpoint '{out / 'checkpoint-4'}': Checkpoint {out / 'checkpoint-4'} is incomplete" in line
    base = ["--model_name_or_path", tiny_dir, "--dataset_name", data, "--output_dir", str(out), *CPU]
    for flag in ("false", "False", "none"):  # not a folder named "false"
        args = train_cmd.parse_args([*base, "--resume_from_checkpoint", flag])
        train_cmd.prepare(*args)
        assert args[1].resume_from_checkpoint is None, flag


# --------------------------------------------------------------------------------------------------------- secrets
def test_hub_token_is_in_no_file_a_run_writes(tiny_dir, tmp_path, monkeypatch):
    """training_args.bin, training_args.json, the model card and the wandb run files, scanned as bytes."""
    import wandb

    wandb.teardown()  # wandb's process-wide settings were read by earlier tests: read WANDB_DIR below afresh
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    token = "hf_" + "q4" * 14
    out = tmp_path / "run"
    extra = ["--hub_token", token, "--max_steps", "1", "--per_device_train_batch_size", "4", "--save_strategy", "no"]
    argv = ["--model_name_or_path", tiny_dir, "--dataset_name", jsonl(tmp_path / "pairs.jsonl", ROWS)]
    argv += ["--output_dir", str(out), "--use_cpu", "--bf16", "false", "--disable_tqdm", "true", "--report_to", "wandb"]
    try:
        rc = train_cmd.main([*argv, *extra])
    finally:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()  # and leave no settings pointing at this test's folder
    assert rc == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "pairs.jsonl"]
    assert {out / "training_args.bin", out / "training_args.json", out / "README.md"} <= set(written)
    run_files = [p for p in written if "wandb" in p.parts]  # the offline run and wandb's logs of its config
    assert any(b"hub_token" in p.read_bytes() for p in run_files)  # the run config was written and is scanned
    leaking = [str(p) for p in written if token.encode() in p.read_bytes()]  # bytes: nothing is unpickled
    assert leaking == []


# ---------------------------------------------------------------------------------------------- dispatcher, compare
def test_dispatcher_errors_are_one_line(capsys):
    from trl_ipo.cli import SUBCOMMANDS

    assert trl_ipo_main([]) == 2
    assert capsys.readouterr().err == (
        f"trl-ipo: error: no command given; choose one of {', '.join(SUBCOMMANDS)} (`trl-ipo --help` describes them)\n"
    )
    assert "train, compare" in ", ".join(SUBCOMMANDS)
    assert trl_ipo_main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unknown command 'trian' (did you mean train?)" in err


def test_compare_usage_and_data_errors_are_one_line(tiny_dir, tmp_path, capsys):
    rc = compare.main(["--dataset", "x.jsonl"])
    line = error_line(capsys, rc, "trl-ipo compare")
    assert "the following arguments are required: --model" in line

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    rc = compare.main(["--model", tiny_dir, "--dataset", str(path), "--output_dir", str(tmp_path / "cmp")])
    line = error_line(capsys, rc, "trl-ipo compare")
    assert f"Dataset file '{path}': line 2 is not valid JSON" in line
    assert not (tmp_path / "cmp").exists()

    rc = trl_ipo_main(["compare", "--model", tiny_dir, "--dataset", str(path), "--beta", "inf"])
    assert "--beta must be a finite number > 0, got inf" in error_line(capsys, rc, "trl-ipo compare")


# ---------------------------------------------------------------------------------------------- config values, streams
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--beta", "inf"], "IPOConfig.beta must be a finite number > 0 (the regularisation strength τ), got inf"),
        (["--loss_type", "ipo", "ipo"], "IPOConfig.loss_type=['ipo', 'ipo'] names ['ipo'] more than once"),
        (
            ["--loss_type", "ipo", "sft", "--loss_weights", "1", "-1"],
            "the weight of 'sft' must be a finite number >= 0",
        ),
    ],
    ids=["beta-inf", "loss-type-twice", "negative-weight"],
)
def test_config_values_on_the_command_line(tiny_dir, tmp_path, capsys, extra, expected):
    line = error_line(capsys, train(tiny_dir, jsonl(tmp_path / "p.jsonl", ROWS), tmp_path / "out", *extra))
    assert expected in line


def test_non_boolean_symmetric_in_yaml(tiny_dir, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": tiny_dir, "output_dir": str(tmp_path), "symmetric": 5}))
    line = error_line(capsys, train_cmd.main(["--config", str(config), "--bf16", "false"]))
    assert f"config file '{config}': field 'symmetric' must be true or false, got int 5" in line


def test_chat_rows_with_a_tokenizer_without_chat_template(tiny_dir, tmp_path, capsys):
    import shutil

    plain_model = tmp_path / "no-template"
    shutil.copytree(tiny_dir, plain_model)
    (plain_model / "chat_template.jinja").unlink()
    config = json.loads((plain_model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain_model / "tokenizer_config.json").write_text(json.dumps(config))
    chat = [
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        }
    ] * 4
    data = jsonl(tmp_path / "chat.jsonl", chat)
    line = error_line(capsys, train(str(plain_model), data, tmp_path / "out"))
    assert f"the tokenizer of --model_name_or_path '{plain_model}' has no chat template" in line
    args = train_cmd.parse_args(
        ["--model_name_or_path", tiny_dir, "--dataset_name", data, "--output_dir", str(tmp_path / "out"), *CPU]
    )
    train_cmd.prepare(*args)  # the same rows pass with a tokenizer that has one


def test_streamed_data_without_max_steps(tiny_dir, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", ROWS)
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "out", "--dataset_streaming", "true"))
    assert "a streamed dataset (--dataset_streaming true) has no length: set --max_steps" in line


def test_bad_row_of_a_streamed_file_is_one_line_with_its_stream_index(tiny_dir, tmp_path, capsys):
    rows = make_pairs(12, seed=6, preference=True)
    rows[5]["q"] = -2.0
    data = jsonl(tmp_path / "pairs.jsonl", rows)
    rc = train(
        tiny_dir,
        data,
        tmp_path / "out",
        "--dataset_streaming",
        "true",
        "--preference_column",
        "q",
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "2",
        "--save_strategy",
        "no",
        "--gradient_checkpointing",
        "false",
        "--max_length",
        "64",
    )
    line = error_line(capsys, rc)
    assert "Preference value -2.0 at column 'q', row 5 of the streamed train dataset is outside [0, 1]" in line


def test_every_row_dropped_by_max_length_is_one_line(tiny_dir, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", ROWS)
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "out", "--max_length", "1", "--max_steps", "1"))
    assert f"all {len(ROWS)} rows of the train dataset were dropped" in line
    assert "max_length=1" in line


# ------------------------------------------------------------------------------------------------------ CLI traps
def test_output_dir_that_is_the_base_model_folder_is_refused(tiny_dir, tmp_path, capsys):
    data = jsonl(tmp_path / "pairs.jsonl", ROWS)
    before = {p.name: p.stat().st_mtime_ns for p in Path(tiny_dir).iterdir()}
    for out in (tiny_dir, tiny_dir + "/", tiny_dir + "/../" + Path(tiny_dir).name):
        line = error_line(capsys, train(tiny_dir, data, out))
        assert f"--output_dir {out!r} is the folder of --model_name_or_path {tiny_dir!r}" in line
    link = tmp_path / "link-to-model"
    link.symlink_to(tiny_dir)
    line = error_line(capsys, train(tiny_dir, data, link))
    assert "overwrite the base model" in line
    assert {p.name: p.stat().st_mtime_ns for p in Path(tiny_dir).iterdir()} == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--beta", "0.1", "--beta", "0.9"], "--beta is given 2 times ('0.1', then '0.9'); give each flag once."),
        (["--beta=0.1", "--beta", "0.9"], "--beta is given 2 times ('0.1', then '0.9')"),
        (["--hub_token", "hf_aaaaaaaa", "--hub_token", "hf_bbbbbbbb"], "--hub_token is given 2 times ('<REDACTED>'"),
    ],
)
def test_repeated_flag_is_an_error_not_last_wins(tiny_dir, tmp_path, capsys, argv, expected):
    line = error_line(capsys, train(tiny_dir, jsonl(tmp_path / "p.jsonl", ROWS), tmp_path / "out", *argv))
    assert expected in line
    assert "hf_aaaaaaaa" not in line
    assert "hf_bbbbbbbb" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dataset_name: 123\n", "field 'dataset_name' must be text or null, got int 123"),
        ("model_init_kwargs: float32\n", "field 'model_init_kwargs' must be a mapping (in a string: a JSON object), "),
        ("output_dir: [a, b]\n", "field 'output_dir' must be text or null, got list ['a', 'b']"),
        ("model_init_kwargs: {dtype: float32, x: !!set {a}}\n", "field 'model_init_kwargs.x' must be text, a number"),
        ("model_init_kwargs: {token: [1, {2: 3}]}\n", "field 'model_init_kwargs.token[1].2' must be a mapping with"),
        ("datasets: [{path: 3}]\n", "field 'datasets[0].path' must be text, got int 3"),
        ("report_to: [wandb, 3]\n", "field 'report_to[1]' must be text, got int 3"),
        ("env: [a]\n", "field 'env' must be a mapping of variable names to text"),
        ("a: &a [x, x]\nb: [*a, *a]\nreport_to: [none]\n", "line 3: YAML aliases (*a) are not accepted"),
        ("report_to: " + "[" * 5000 + "]" * 5000 + "\n", "nests too deeply"),
        ("model_init_kwargs: {a: " + "[" * 100 + "]" * 100 + "}\n", "must be nested at most 64 levels deep"),
    ],
)
def test_yaml_fields_of_the_wrong_type_at_any_depth(tiny_dir, tmp_path, capsys, text, expected):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {tiny_dir}\n" + text)
    line = error_line(capsys, train_cmd.main(["--config", str(config)]))
    assert f"config file '{config}'" in line
    assert expected in line


def test_oversized_yaml_is_refused_unread(tmp_path, capsys, monkeypatch):
    config = tmp_path / "run.yaml"
    config.write_text("output_dir: x\n" * 10)
    monkeypatch.setattr(train_cmd, "MAX_CONFIG_BYTES", 20)
    line = error_line(capsys, train_cmd.main(["--config", str(config)]))
    assert f"config file '{config}' is {config.stat().st_size} bytes" in line
    assert "MAX_CONFIG_BYTES" in line
    assert train_cmd.MAX_CONFIG_BYTES == 20


def test_model_init_kwargs_flag_types_and_values(tiny_dir, tmp_path, capsys):
    data = jsonl(tmp_path / "p.jsonl", ROWS)
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "o", "--model_init_kwargs", "float32"))
    assert "--model_init_kwargs must be a mapping (in a string: a JSON object), got str 'float32'" in line
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "o", "--model_init_kwargs", '{"dtype": "float33"}'))
    assert "--model_init_kwargs: dtype='float33' is not a dtype" in line
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "o", "--model_init_kwargs", '{"dtype": ["float32"]}'))
    assert "--model_init_kwargs: dtype=['float32'] is not a dtype" in line


def test_flash_attention_that_is_not_installed_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    data = jsonl(tmp_path / "p.jsonl", ROWS)
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "o", "--attn_implementation", "flash_attention_2"))
    assert "--attn_implementation 'flash_attention_2': it is not available here" in line
    kwargs = '{"attn_implementation": "flash_attention_2"}'
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "o", "--model_init_kwargs", kwargs))
    assert "--model_init_kwargs attn_implementation 'flash_attention_2'" in line


def test_streaming_with_precomputed_reference_is_one_line(tiny_dir, tmp_path, capsys):
    data = jsonl(tmp_path / "p.jsonl", ROWS)
    extra = ["--dataset_streaming", "true", "--precompute_ref_log_probs", "true", "--max_steps", "2"]
    line = error_line(capsys, train(tiny_dir, data, tmp_path / "o", *extra))
    assert "--dataset_streaming true cannot be combined with --precompute_ref_log_probs true" in line


@pytest.mark.parametrize(
    ("argv", "prog", "expected"),
    [
        (["tiny-model", "{tmp}/m", "--pairs", "-3"], "tiny-model", "--pairs must be at least 0, got -3"),
        (["tiny-model", "{tmp}/a-file"], "tiny-model", "OUT_DIR '{tmp}/a-file' is an existing file, not a folder"),
        (["tiny-model", "{tmp}/m", "--num_layers", "0"], "tiny-model", "--num_layers must be at least 1, got 0"),
        (["tiny-model", "{tmp}/m", "--seed", "1", "--seed", "2"], "tiny-model", "--seed is given 2 times"),
        (["tiny-model"], "tiny-model", "the following arguments are required: out_dir"),
        (["example", "--max_steps", "-5"], "example", "--max_steps must be at least 1, got -5"),
        (["example", "--beta", "nan"], "example", "--beta must be a finite number > 0, got nan"),
        (["example", "--output_dir", "{tmp}/a-file"], "example", "--output_dir '{tmp}/a-file' is an existing file"),
        (["compare", "--model", "m", "--dataset", "d.jsonl", "--batch_size", "0"], "compare", "--batch_size must be"),
        (["compare", "--model", "m", "--dataset", "d.jsonl", "--kl_samples", "-1"], "compare", "--kl_samples must"),
        (["compare", "--model", "m", "--dataset", "d", "--beta", "1", "--beta", "2"], "compare", "--beta is given 2"),
    ],
)
def test_subcommand_flags_are_checked_before_anything_is_written(tmp_path, capsys, argv, prog, expected):
    (tmp_path / "a-file").write_text("x")
    rc = trl_ipo_main([a.format(tmp=tmp_path) for a in argv])
    line = error_line(capsys, rc, prog=f"trl-ipo {prog}")
    assert expected.format(tmp=tmp_path) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written


def test_tiny_model_refuses_a_folder_that_holds_a_model_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "m"
    assert trl_ipo_main(["tiny-model", str(out)]) == 0
    capsys.readouterr()
    config = (out / "config.json").read_bytes()
    line = error_line(capsys, trl_ipo_main(["tiny-model", str(out), "--hidden_size", "16"]), prog="trl-ipo tiny-model")
    assert f"OUT_DIR '{out}' already holds a model (config.json" in line
    assert "--overwrite" in line
    assert (out / "config.json").read_bytes() == config
    assert trl_ipo_main(["tiny-model", str(out), "--hidden_size", "16", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 16
