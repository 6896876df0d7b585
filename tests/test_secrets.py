"""No credential in any file or run record trl_ipo writes: training_args.bin/.json, checkpoints, model card, wandb."""

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cpu_args, make_pairs

from trl_ipo.config import IPOConfig
from trl_ipo.redact import MASK, is_secret_name, redact, scrub_argv

REPO = Path(__file__).resolve().parents[1]
HUB_TOKEN = "hf_" + "Zq7" * 10
NESTED_TOKEN = "hf_" + "Nw4" * 10
API_KEY = "sk-" + "Kx9" * 10

pytestmark = pytest.mark.usefixtures("restore_global_rng")


def leaks(folder, *secrets) -> list[str]:
    """Every file under ``folder`` (read as bytes: nothing is unpickled) holding one of ``secrets``."""
    return [
        f"{p}: {s[:6]}..."
        for p in Path(folder).rglob("*")
        if p.is_file()
        for s in secrets
        if s.encode() in p.read_bytes()
    ]


# ----------------------------------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    "name", ["hub_token", "token", "TOKEN", "api_key", "apiKey", "client_secret", "db-password", "Authorization.key"]
)
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["max_key_length", "pad_token", "eos_token", "pad_token_id", "token_count", "secret_name", "keys", "dtype"]
)
def test_names_that_only_mention_a_secret_word_are_kept(name):
    assert not is_secret_name(name)


def test_redact_masks_at_any_depth_and_keeps_the_rest():
    value = {
        "dtype": "float32",
        "token": HUB_TOKEN,
        "max_key_length": 7,
        "inner": [{"deeper": {"API_KEY": API_KEY, "use_auth": True}}],
        "cache_token": True,  # token=True means "the cached login": no secret to mask
    }
    assert redact(value) == {
        "dtype": "float32",
        "token": MASK,
        "max_key_length": 7,
        "inner": [{"deeper": {"API_KEY": MASK, "use_auth": True}}],
        "cache_token": True,
    }


def test_scrub_argv():
    argv = ["trl-ipo", "train", "--hub_token", HUB_TOKEN, f"--api_key={API_KEY}", "--model_init_kwargs"]
    argv += [json.dumps({"token": NESTED_TOKEN, "dtype": "float32"}), "--beta", "0.1"]
    scrubbed = scrub_argv(argv)
    assert not any(s in " ".join(scrubbed) for s in (HUB_TOKEN, API_KEY, NESTED_TOKEN))
    assert scrubbed[:4] == ["trl-ipo", "train", "--hub_token", MASK]
    assert scrubbed[-2:] == ["--beta", "0.1"]
    assert json.loads(scrubbed[6]) == {"token": MASK, "dtype": "float32"}


# --------------------------------------------------------------------------------------------- IPOConfig itself
def _config(tmp_path, model_init_kwargs, **overrides):
    return IPOConfig(**cpu_args(tmp_path, hub_token=HUB_TOKEN, model_init_kwargs=model_init_kwargs, **overrides))


def test_pickle_masks_secrets_while_copies_keep_them(tmp_path):
    config = _config(tmp_path, {"token": NESTED_TOKEN, "extra": {"api_key": API_KEY}, "dtype": "float32"})
    blob = pickle.dumps(config)
    assert not any(s.encode() in blob for s in (HUB_TOKEN, NESTED_TOKEN, API_KEY))
    restored = pickle.loads(blob)  # our own pickle, written just above
    assert restored.hub_token is None
    assert restored.model_init_kwargs["token"] == MASK
    assert restored.beta == config.beta
    assert restored.model_init_kwargs["dtype"] == "float32"
    for clone in (copy.copy(config), copy.deepcopy(config)):  # in-process copies still push with the token
        assert clone.hub_token == HUB_TOKEN
        assert clone.model_init_kwargs["extra"]["api_key"] == API_KEY
    assert config.hub_token == HUB_TOKEN  # pickling left the live object untouched
    text = json.dumps(config.to_dict(), default=str)
    assert not any(s in text for s in (HUB_TOKEN, NESTED_TOKEN, API_KEY))


def test_online_config_pickles_without_secrets_too(tmp_path):
    from trl_ipo.online import OnlineIPOConfig

    config = OnlineIPOConfig(output_dir=str(tmp_path), bf16=False, hub_token=HUB_TOKEN)
    assert HUB_TOKEN.encode() not in pickle.dumps(config)
    assert copy.deepcopy(config).hub_token == HUB_TOKEN


# -------------------------------------------------------------------------------------------- API, CLI, wandb
@pytest.mark.slow
def test_api_training_with_wandb_writes_no_secret(tiny_dir, tmp_path, monkeypatch):
    import wandb
    from datasets import Dataset

    from trl_ipo import IPOTrainer

    wandb.teardown()  # wandb's process-wide settings may have been read by earlier tests: read WANDB_DIR afresh
    monkeypatch.delenv("HF_TOKEN", raising=False)
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir()
    for name, value in (("WANDB_DIR", str(wandb_dir)), ("WANDB_MODE", "offline"), ("WANDB_SILENT", "true")):
        monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    # from_pretrained takes `token` (a local folder ignores it); the nested API key is checked by the pickle test.
    config = _config(
        out,
        {"token": NESTED_TOKEN, "dtype": "float32"},
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        report_to="wandb",
    )
    try:
        trainer = IPOTrainer(model=tiny_dir, args=config, train_dataset=Dataset.from_list(make_pairs(8, seed=1)))
        trainer.train()
        trainer.save_model(str(out))
        trainer.save_state()
    finally:
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()
    assert trainer.args.hub_token == HUB_TOKEN  # still usable by push_to_hub in this process
    assert any(b"model_init_kwargs" in p.read_bytes() for p in wandb_dir.rglob("run-*.wandb"))  # config recorded
    assert leaks(wandb_dir, HUB_TOKEN, NESTED_TOKEN) == []
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"training_args.bin", "training_args.json", "checkpoint-1/training_args.bin"} <= written
    assert leaks(out, HUB_TOKEN, NESTED_TOKEN) == []
    saved = torch.load(out / "training_args.bin", weights_only=False)  # written by this test's own run
    assert saved.hub_token is None
    assert saved.model_init_kwargs == {"token": MASK, "dtype": "float32"}


@pytest.mark.slow
def test_cli_training_with_wandb_writes_no_secret(tiny_dir, tmp_path):
    """`python -m trl_ipo train` in its own process: sys.argv holds the secrets, as for a user's shell."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(8, seed=1)))
    out, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    wandb_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_TOKEN", None)
    command = [sys.executable, "-m", "trl_ipo", "train", "--model_name_or_path", tiny_dir, "--dataset_name", str(data)]
    command += ["--output_dir", str(out), "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1"]
    command += ["--per_device_train_batch_size", "4", "--use_cpu", "--bf16", "false", "--report_to", "wandb"]
    command += ["--hub_token", HUB_TOKEN, "--model_init_kwargs", json.dumps({"token": NESTED_TOKEN})]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(s in done.stdout + done.stderr for s in (HUB_TOKEN, NESTED_TOKEN))
    run_files = list(wandb_dir.rglob("run-*.wandb")) + list(wandb_dir.rglob("debug.log"))
    assert run_files
    assert any(b"hub_token" in p.read_bytes() for p in run_files)
    assert any(b"--hub_token" in p.read_bytes() for p in wandb_dir.rglob("*") if p.is_file())  # and its argv
    assert (out / "checkpoint-1" / "training_args.bin").is_file()
    assert (out / "training_args.json").is_file()
    assert leaks(tmp_path, HUB_TOKEN, NESTED_TOKEN) == []
