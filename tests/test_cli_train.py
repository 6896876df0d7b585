"""`trl-ipo train` / scripts/train_ipo.py: YAML + overrides, TRL dpo configs, local data formats, errors, help."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_pairs

from trl_ipo.commands import train as train_cmd
from trl_ipo.config import IPOConfig
from trl_ipo.datasets_io import load_preference_dataset

REPO = Path(__file__).resolve().parents[1]
CPU = dict(bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none", disable_tqdm=True, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 preference rows (with a q column) written as JSONL, plus the rows themselves."""
    folder = tmp_path_factory.mktemp("cli-data")
    rows = make_pairs(16, seed=1, preference=True)
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"dir": folder, "jsonl": str(path), "rows": rows}


def write_yaml(path, values):
    path.write_text(yaml.safe_dump(values))
    return str(path)


def run_cli(argv, capsys):
    rc = train_cmd.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------ must hold 1
@pytest.mark.compat
def test_yaml_config_and_overrides_train_and_save_model_with_card(tiny_dir, data, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    config = write_yaml(
        tmp_path / "run.yaml",
        dict(
            model_name_or_path=tiny_dir,
            dataset_name=data["jsonl"],
            output_dir=str(out),
            learning_rate=1.0e-3,
            beta=0.1,
            loss_form="scaled",
            max_steps=5,
            per_device_train_batch_size=4,
            logging_steps=1,
            save_strategy="steps",
            save_steps=2,
            **CPU,
        ),
    )
    # Command-line values win over the file: beta, symmetric, max_steps, logp_reduction.
    rc, _, err = run_cli(
        ["--config", config, "--beta", "0.25", "--symmetric", "false", "--max_steps", "2", "--logp_reduction", "sum"],
        capsys,
    )
    assert rc == 0, err

    used = torch.load(out / "training_args.bin", weights_only=False)
    assert isinstance(used, IPOConfig)
    assert (used.beta, used.symmetric, used.max_steps, used.logp_reduction) == (0.25, False, 2, "sum")  # overrides
    assert (used.learning_rate, used.loss_form, used.per_device_train_batch_size) == (1.0e-3, "scaled", 4)  # YAML

    # The values reached the loss: at step 1 the policy is the reference (Δ = 0); with loss_form=scaled,
    # symmetric=False and hard labels (q = 1) the per-pair loss is (β·0 − q)² = 1. (The defaults, paper form with
    # symmetric targets, would give (0 − 0.5/β)² = 4 at β = 0.25.)
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    first = state["log_history"][0]
    assert first["ipo/target"] == pytest.approx(1.0)
    assert first["loss"] == pytest.approx(1.0, abs=1e-4)
    assert state["global_step"] == 2
    final_state = json.loads((out / "trainer_state.json").read_text())  # saved next to the model for `trl-ipo plot`
    assert final_state["log_history"][: len(state["log_history"])] == state["log_history"]

    # A loadable model that was trained.
    trained = AutoModelForCausalLM.from_pretrained(out)
    initial = AutoModelForCausalLM.from_pretrained(tiny_dir)
    changed = [
        n
        for (n, p), (_, p0) in zip(trained.named_parameters(), initial.named_parameters(), strict=True)
        if not torch.equal(p, p0)
    ]
    assert changed

    card = (out / "README.md").read_text()
    assert "This model was trained with IPO" in card
    assert "2310.12036" in card
    assert "azar2024general" in card
    assert "| `beta` | `0.25` |" in card
    assert "| `loss_form` | `'scaled'` |" in card
    assert "| `symmetric` | `False` |" in card
    assert "L = (β·Δ − t)²,   t = q," in card
    assert "huggingface.co/None" not in card
    assert tiny_dir in card
    assert card.count("## IPO settings") == 1  # written at the checkpoint and again at the end, never twice


# ------------------------------------------------------------------------------------------------ must hold 2
def trl_dpo_yaml(tiny_dir, jsonl, out):
    """A config in the form TRL documents for `trl dpo` (script, training and LoRA fields)."""
    return dict(
        model_name_or_path=tiny_dir,
        dataset_name=jsonl,
        dataset_train_split="train",
        dataset_test_split="test",
        learning_rate=5.0e-4,
        beta=0.1,
        max_length=64,
        num_train_epochs=1,
        max_steps=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        eval_strategy="no",
        logging_steps=1,
        save_strategy="no",
        output_dir=str(out),
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lora_target_modules=["q_proj", "v_proj"],
        **CPU,
    )


@pytest.mark.compat
def test_trl_dpo_yaml_runs_unchanged(tiny_dir, data, tmp_path, capsys):
    from trl.scripts.dpo import make_parser as trl_dpo_parser

    out = tmp_path / "lora"
    config = write_yaml(tmp_path / "dpo.yaml", trl_dpo_yaml(tiny_dir, data["jsonl"], out))

    # Every value TRL's own `dpo` parser reads from the file is read identically by trl-ipo train.
    trl_script, trl_training, trl_model, trl_mixture = trl_dpo_parser().parse_args_and_config(["--config", config])
    script, training, model, mixture = train_cmd.parse_args(["--config", config])
    assert (script, model, mixture) == (trl_script, trl_model, trl_mixture)
    ours, theirs = training.to_dict(), trl_training.to_dict()
    for name in theirs:
        if name not in ("loss_type", "loss_weights"):  # IPO's own: ["ipo"] instead of DPO's ["sigmoid"]
            assert ours[name] == theirs[name], name
    assert training.loss_type == ["ipo"]

    rc, _, err = run_cli(["--config", config], capsys)
    assert rc == 0, err
    adapter = json.loads((out / "adapter_config.json").read_text())  # the LoRA flags were used
    assert (adapter["r"], adapter["lora_alpha"], set(adapter["target_modules"])) == (4, 8, {"q_proj", "v_proj"})
    assert "| `loss_type` | `['ipo']` |" in (out / "README.md").read_text()


def test_trl_dpo_yaml_with_a_dpo_loss_type_is_rejected(tiny_dir, data, tmp_path, capsys):
    config = write_yaml(
        tmp_path / "dpo.yaml", {**trl_dpo_yaml(tiny_dir, data["jsonl"], tmp_path), "loss_type": "sigmoid"}
    )
    rc, _, err = run_cli(["--config", config], capsys)
    assert rc == 2
    assert "loss_type=['sigmoid']" in err
    assert "['ipo'] or ['ipo', 'sft']" in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------ must hold 3
def base_argv(tiny_dir, dataset, out):
    return [
        "--model_name_or_path",
        tiny_dir,
        "--dataset_name",
        dataset,
        "--output_dir",
        out,
        "--use_cpu",
        "--bf16",
        "false",
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--lossform", "scaled"], ["unrecognized arguments: --lossform (did you mean --loss_form?)"]),
        (["--loss_form", "squared"], ["loss_form", "'squared'", "paper", "scaled"]),
        (["--logp_reduction", "median"], ["logp_reduction", "'median'", "mean", "sum"]),
        (["--symmetric", "maybe"], ["symmetric", "maybe"]),
        (["--beta", "0"], ["beta must be > 0", "0.0"]),
        (["--loss_type", "sigmoid"], ["loss_type=['sigmoid']", "DPOTrainer"]),
        (["--preference_column", "votes"], ["missing column(s) ['votes']", "'prompt', 'chosen', 'rejected', 'q'"]),
    ],
    ids=["unknown-flag", "loss_form", "logp_reduction", "symmetric", "beta", "loss_type", "preference_column"],
)
def test_bad_flags_and_values_give_one_clear_line(tiny_dir, data, tmp_path, capsys, extra, expected):
    rc, _, err = run_cli(base_argv(tiny_dir, data["jsonl"], tmp_path) + extra, capsys)
    assert rc == 2
    assert err.startswith("trl-ipo train: error: ")
    assert "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)


def test_bad_data_and_paths_give_one_clear_line(tiny_dir, data, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc, _, err = run_cli(base_argv(tiny_dir, missing, tmp_path), capsys)
    assert rc == 2
    assert f"Dataset file or folder not found: '{missing}'" in err

    renamed = tmp_path / "renamed.jsonl"  # columns question/good/bad instead of prompt/chosen/rejected
    renamed.write_text(
        "".join(
            json.dumps({"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"]}) + "\n"
            for r in data["rows"]
        )
    )
    rc, _, err = run_cli(base_argv(tiny_dir, renamed, tmp_path), capsys)
    assert rc == 2
    assert "missing column(s) ['chosen', 'rejected']" in err
    assert "Its columns are ['question', 'good', 'bad']" in err
    assert "expects 'chosen' and 'rejected' (and optionally 'prompt')" in err

    bad_q = tmp_path / "bad_q.jsonl"
    bad_q.write_text(
        "".join(json.dumps({**r, "q": 1.5 if i == 3 else r["q"]}) + "\n" for i, r in enumerate(data["rows"]))
    )
    rc, _, err = run_cli(base_argv(tiny_dir, bad_q, tmp_path) + ["--preference_column", "q"], capsys)
    assert rc == 2
    assert "1.5" in err
    assert "row 3" in err

    rc, _, err = run_cli(base_argv(tiny_dir, data["jsonl"], tmp_path) + ["--eval_strategy", "steps"], capsys)
    assert rc == 2
    assert "no split 'test' for evaluation; its splits are ['train']" in err

    rc, _, err = run_cli(base_argv(str(tmp_path / "no-model"), data["jsonl"], tmp_path), capsys)
    assert rc == 2
    assert "model folder not found" in err

    config = write_yaml(tmp_path / "typo.yaml", {"model_name_or_path": tiny_dir, "lerning_rate": 1e-3})
    rc, _, err = run_cli(["--config", config], capsys)
    assert rc == 2
    assert "unknown fields in" in err
    assert "lerning_rate (did you mean learning_rate?)" in err

    rc, _, err = run_cli(["--config", tmp_path / "absent.yaml"], capsys)
    assert rc == 2
    assert "config file not found" in err
    assert "Traceback" not in err


@pytest.mark.compat
@pytest.mark.slow
def test_bad_input_exit_status_without_traceback_in_a_real_process(tiny_dir, tmp_path):
    missing = tmp_path / "missing.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "trl_ipo", "train", *base_argv(tiny_dir, str(missing), str(tmp_path))],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"trl-ipo train: error: Dataset file or folder not found: '{missing}'" in proc.stderr


# ------------------------------------------------------------------------------------------------ must hold 4
IPO_FIELDS = ("beta", "loss_form", "symmetric", "logp_reduction", "preference_column", "loss_type")


def _help(name):
    return " ".join(IPOConfig.__dataclass_fields__[name].metadata["help"].split())


def test_help_lists_every_ipo_flag_with_its_meaning(capsys):
    assert train_cmd.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in IPO_FIELDS:
        assert re.search(rf"^  --{name} +{re.escape(_help(name))}$", text, re.M), name  # the IPO table
        assert re.search(rf"^  --{name}\b", text.split("All options:")[1], re.M), name  # the option itself

    from trl_ipo.cli import main as trl_ipo_main

    assert trl_ipo_main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "train " in text
    for name in IPO_FIELDS:
        assert re.search(rf"^  --{name} +{re.escape(_help(name))}$", text, re.M), name


# ------------------------------------------------------------------------------------------------ data formats
def test_local_formats_load_the_same_rows(data, tmp_path):
    from datasets import Dataset, DatasetDict

    reference = Dataset.from_list(data["rows"])
    reference.to_parquet(str(tmp_path / "pairs.parquet"))
    reference.to_csv(str(tmp_path / "pairs.csv"), index=False)
    reference.save_to_disk(str(tmp_path / "saved_dataset"))
    DatasetDict({"train": reference}).save_to_disk(str(tmp_path / "saved_dict"))
    for source in (data["jsonl"], "pairs.parquet", "pairs.csv", "saved_dataset", "saved_dict"):
        loaded = load_preference_dataset(str(tmp_path / source))["train"]
        assert loaded.to_list() == data["rows"], source


def test_trl_datasets_mixture_in_yaml(tiny_dir, data, tmp_path):
    mixture = {"datasets": [{"path": "json", "data_files": data["jsonl"], "split": "train"}], "test_split_size": 0.25}
    config = write_yaml(tmp_path / "mix.yaml", {"model_name_or_path": tiny_dir, **mixture, **CPU})
    script, training, _, dataset_args = train_cmd.parse_args(["--config", config, "--eval_strategy", "steps"])
    train, evaluation = train_cmd.load_datasets(script, training, dataset_args)
    assert (len(train), len(evaluation)) == (12, 4)
    assert sorted([*train["chosen"], *evaluation["chosen"]]) == sorted(r["chosen"] for r in data["rows"])


# ------------------------------------------------------------------------------------------------ packaged configs
@pytest.mark.parametrize("name", ["quick_local", "lora_7b", "zero3_full"])
def test_packaged_configs_parse(name, tmp_path):
    values = yaml.safe_load((REPO / "scripts" / "configs" / f"{name}.yaml").read_text())
    deepspeed = values.pop("deepspeed", None)
    if deepspeed is not None:  # resolved, not set up here (that would change process-wide DeepSpeed state)
        from trl_ipo.distributed import resolve_config

        assert json.loads(Path(resolve_config(deepspeed, "deepspeed")).read_text())["zero_optimization"]["stage"] == 3
    values.update(bf16=False, report_to="none")  # this test host has no GPU and need not have a tracker
    script, training, model, _ = train_cmd.parse_args(["--config", write_yaml(tmp_path / "c.yaml", values)])
    assert (script.dataset_name, model.model_name_or_path, training.beta) == (
        values["dataset_name"],
        values["model_name_or_path"],
        values["beta"],
    )
    assert model.use_peft is bool(values.get("use_peft", False))


def test_deepspeed_short_names_resolve_to_packaged_files(capsys):
    from trl_ipo.distributed import resolve_config

    for argv in (["--deepspeed", "zero3"], ["--deepspeed=zero3"]):
        resolved = train_cmd._resolve_deepspeed_flag(["--max_steps", "1", *argv])
        assert resolved[-1].endswith(resolve_config("zero3", "deepspeed")), resolved
    rc, _, err = run_cli(["--deepspeed", "zero9"], capsys)
    assert rc == 2
    assert "--deepspeed 'zero9'" in err
    assert "zero3" in err
    assert "Traceback" not in err
