"""Settings that used to be accepted and silently ignored: each now errors or warns, by name.

Also: the bf16 default, a DPOConfig handed to IPOTrainer, ``last_logged_pairs`` after ``train()``, compare's
reduction and ``trl-ipo tiny-model``.
"""

from __future__ import annotations

import json
import types
import warnings

import pytest
import torch
from conftest import cpu_args, make_pairs


def _no_bf16_gpu() -> bool:
    from transformers.utils import is_torch_bf16_gpu_available

    return not is_torch_bf16_gpu_available()


# --------------------------------------------------------------------------------------------------------- bf16
def test_bf16_default_follows_the_device(monkeypatch):
    import transformers.utils

    from trl_ipo.dpo_fields import resolve_bf16

    cases = [  # (bf16 GPU available, fp16, use_cpu) -> resolved bf16
        ((True, False, False), True),
        ((False, False, False), False),
        ((True, True, False), False),
        ((True, False, True), False),
    ]
    for (available, fp16, use_cpu), expected in cases:
        monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda a=available: a)
        monkeypatch.setattr(transformers.utils, "is_torch_xla_available", lambda *a, **k: False)
        config = types.SimpleNamespace(bf16=None, fp16=fp16, use_cpu=use_cpu)
        resolve_bf16(config)
        assert config.bf16 is expected, (available, fp16, use_cpu)


@pytest.mark.skipif(not _no_bf16_gpu(), reason="this machine has a bf16 GPU")
def test_configs_build_on_a_cpu_and_explicit_bf16_names_the_fix(tmp_path):
    from trl_ipo import IPOConfig
    from trl_ipo.online import OnlineIPOConfig

    assert IPOConfig(output_dir=str(tmp_path)).bf16 is False
    assert OnlineIPOConfig(output_dir=str(tmp_path)).bf16 is False
    for cls in (IPOConfig, OnlineIPOConfig):
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.bf16=True.*Set bf16=False"):
            cls(output_dir=str(tmp_path), bf16=True)
    assert IPOConfig(output_dir=str(tmp_path), bf16=True, use_cpu=True).bf16 is True  # CPU autocast, as transformers


# ----------------------------------------------------------------------------------------- refused and ignored
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("label_smoothing", 0.1, r"IPOConfig\.label_smoothing=0\.1 has no effect on IPO.*preference_column"),
    ],
)
def test_refused_fields_stop_the_config(tmp_path, field, value, message):
    from trl_ipo import IPOConfig

    with pytest.raises(ValueError, match=message):
        IPOConfig(output_dir=str(tmp_path), bf16=False, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("discopop_tau", 0.2),
        ("ref_model_mixup_alpha", 0.9),
        ("ref_model_sync_steps", 64),
        ("f_alpha_divergence_coef", 0.3),
    ],
)
def test_ignored_fields_warn_by_name(tmp_path, field, value):
    from trl_ipo import IPOConfig

    with pytest.warns(UserWarning, match=rf"IPOConfig\.{field}={value!r} is ignored by IPOTrainer"):
        IPOConfig(output_dir=str(tmp_path), bf16=False, **{field: value})  # sync_ref_model=False (the default)


def test_sync_ref_model_is_implemented_and_reads_its_settings(tmp_path):
    """TR-IPO: with sync_ref_model=True, α and the period are used (no warning); the table says implemented."""
    from trl_ipo import IPOConfig
    from trl_ipo.dpo_fields import DPO_FIELDS, IMPLEMENTED

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = IPOConfig(
            output_dir=str(tmp_path), bf16=False, sync_ref_model=True, ref_model_mixup_alpha=0.9, ref_model_sync_steps=4
        )
    assert (args.sync_ref_model, args.ref_model_mixup_alpha, args.ref_model_sync_steps) == (True, 0.9, 4)
    assert not [w for w in caught if "is ignored by IPOTrainer" in str(w.message)]
    for name in ("sync_ref_model", "ref_model_mixup_alpha", "ref_model_sync_steps"):
        assert DPO_FIELDS[name][0] == IMPLEMENTED, name


def test_defaults_give_no_field_warning(tmp_path):
    from trl_ipo import IPOConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        IPOConfig(output_dir=str(tmp_path), bf16=False)
    assert not [w for w in caught if "is ignored by IPOTrainer" in str(w.message)]


def test_alpha_coefficient_is_used_with_the_alpha_divergence(tmp_path):
    from trl_ipo import IPOConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        IPOConfig(
            output_dir=str(tmp_path), bf16=False, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3
        )
    assert not [w for w in caught if "f_alpha_divergence_coef" in str(w.message)]


# ------------------------------------------------------------------------------------- a DPOConfig as the args
def test_dpo_config_with_a_dpo_loss_warns_and_trains_ipo(tmp_path):
    from trl import DPOConfig

    from trl_ipo.trainer import _as_ipo_config

    dpo = DPOConfig(
        output_dir=str(tmp_path), bf16=False, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5], beta=0.3
    )
    with pytest.warns(UserWarning, match=r"loss_type=\['sigmoid', 'sft'\] and loss_weights=\[1\.0, 0\.5\] replaced"):
        ipo = _as_ipo_config(dpo, "model")
    assert (ipo.loss_type, ipo.loss_weights, ipo.beta) == (["ipo"], None, 0.3)
    assert dpo.loss_type == ["sigmoid", "sft"]  # the caller's object is left as it was


def test_dpo_config_with_an_ipo_loss_is_kept_without_warning(tmp_path):
    from trl import DPOConfig

    from trl_ipo.trainer import _as_ipo_config

    dpo = DPOConfig(output_dir=str(tmp_path), bf16=False, loss_type=["ipo", "sft"], loss_weights=[1.0, 0.25])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ipo = _as_ipo_config(dpo, "model")
    assert not [w for w in caught if "replaced by IPOConfig" in str(w.message)]
    assert (ipo.loss_type, ipo.loss_weights) == (["ipo", "sft"], [1.0, 0.25])


# ---------------------------------------------------------------------------------------- last_logged_pairs
def test_last_logged_pairs_survive_the_summary_log(tmp_path, load_model, tokenizer, one_torch_thread):
    from datasets import Dataset

    from trl_ipo import IPOConfig, IPOTrainer

    beta = 0.25
    trainer = IPOTrainer(
        model=load_model(),
        args=IPOConfig(**cpu_args(tmp_path, beta=beta, max_steps=2)),
        train_dataset=Dataset.from_list(make_pairs(8, seed=5)),
        processing_class=tokenizer,
    )
    trainer.train()
    assert "train_runtime" in trainer.state.log_history[-1]  # the summary log came after the last step's log
    pairs = trainer.last_logged_pairs("train")
    assert set(pairs) == {"delta", "target", "preference"}
    assert len(pairs["delta"]) == 4
    last_step = trainer.state.log_history[-2]
    assert pairs["delta"].mean().item() == pytest.approx(last_step["ipo/delta"], rel=1e-5, abs=1e-7)
    assert torch.allclose(pairs["target"], torch.full((4,), 0.5 / beta))  # hard labels: t/β = ½/β


# ------------------------------------------------------------------------------------------- compare and CLI
def test_compare_and_train_default_to_the_same_reduction():
    from trl_ipo import IPOConfig
    from trl_ipo.cli import SUBCOMMANDS
    from trl_ipo.commands import compare

    parsed = compare._parser().parse_args(["--model", "m", "--dataset", "d"])
    assert parsed.logp_reduction == IPOConfig.__dataclass_fields__["logp_reduction"].default == "mean"
    assert "RLHF" not in SUBCOMMANDS["compare"][1]
    assert "as in `trl-ipo train`" in " ".join(compare._parser().format_help().split())


def test_tiny_model_command_builds_a_loadable_model_and_rows(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ipo.cli import main

    out = tmp_path / "tiny"
    assert main(["tiny-model", str(out), "--pairs", "5"]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32
    assert model.config.vocab_size == len(tok)
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows] == make_pairs(5, seed=1)
    assert all(0.0 <= r["q"] <= 1.0 for r in rows)
    assert main(["tiny-model", str(tmp_path / "bad"), "--hidden_size", "30"]) == 2
