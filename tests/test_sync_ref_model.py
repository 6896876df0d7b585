"""TR-IPO: ``sync_ref_model=True`` moves the reference during training, exactly as ``trl.DPOTrainer`` does.

The reference is soft-updated, π_ref ← α·π_θ + (1 − α)·π_ref (Gorbatovski et al. 2024), after every
``ref_model_sync_steps`` optimizer steps. Checked against stock ``DPOTrainer(loss_type=["ipo"], sync_ref_model=True)``
(losses, policy and reference weights over three sync periods), against the update rule applied by hand to recorded
weights, across the packed layouts, and under ZeRO-3 on two ranks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import cpu_args, global_rng_restored, make_pairs
from datasets import Dataset
from launch import torchrun_two_ranks
from trainer_utils import params
from transformers import TrainerCallback

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = make_pairs(12, seed=4)
SYNC = dict(sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=0.5)
STEPS = 6  # three sync periods
RUN = dict(max_steps=STEPS, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", beta=0.5, **SYNC)
WORKER = Path(__file__).resolve().parent / "workers" / "sync_ref_ipo.py"


class WeightsAtStepEnd(TrainerCallback):
    """Policy and reference weights at each step's end, before the reference update of that step (trainer
    callbacks passed as ``callbacks=`` run before the sync callback TRL adds)."""

    def __init__(self):
        self.trainer, self.records = None, []

    def on_step_end(self, args, state, control, **kwargs):
        self.records.append(
            {"step": state.global_step, "policy": params(self.trainer.model), "ref": params(self.trainer.ref_model)}
        )


def _train(trainer_cls, config_cls, load_model, tokenizer, out, callback=None, **overrides):
    with global_rng_restored():
        trainer = trainer_cls(
            model=load_model(),
            args=config_cls(**cpu_args(out, **{**RUN, **overrides})),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
            callbacks=[callback] if callback else None,
        )
        if callback is not None:
            callback.trainer = trainer
        trainer.train()
    return trainer


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.fixture(scope="module")
def padded(tiny_dir, tmp_path_factory):
    """IPOTrainer with sync on the padded layout, its weights recorded at every step's end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def load_model():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    callback = WeightsAtStepEnd()
    initial = params(load_model())
    trainer = _train(IPOTrainer, IPOConfig, load_model, tokenizer, tmp_path_factory.mktemp("padded"), callback)
    return trainer, callback.records, initial


# ------------------------------------------------------------------------------------------- against stock TRL
def test_losses_and_weights_match_stock_trl_over_three_sync_periods(padded, load_model, tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    ours, _, initial = padded
    stock = _train(DPOTrainer, DPOConfig, load_model, tokenizer, tmp_path, loss_type=["ipo"])
    assert len(_losses(ours)) == STEPS
    assert _losses(ours) == pytest.approx(_losses(stock), rel=1e-5, abs=1e-7)
    for model_name in ("model", "ref_model"):
        pa, pb = params(getattr(ours, model_name)), params(getattr(stock, model_name))
        assert pa.keys() == pb.keys()
        for name in pa:
            torch.testing.assert_close(
                pa[name], pb[name], rtol=1e-5, atol=1e-6, msg=lambda m, where=f"{model_name}.{name}": f"{where}: {m}"
            )
    moved = [n for n, p in params(ours.ref_model).items() if not torch.equal(p, initial[n])]
    assert len(moved) == len(initial)  # every reference tensor was updated


def _assert_soft_updates(records, initial, final, alpha, period):
    """Replay π_ref ← α·π_θ + (1 − α)·π_ref at every sync step on the recorded weights."""
    expected = initial  # the reference before step 1
    for record in records:
        for name, value in expected.items():  # the reference the step trained against
            torch.testing.assert_close(record["ref"][name], value, rtol=1e-6, atol=1e-7, msg=(record["step"], name))
        if record["step"] % period == 0:
            expected = {n: (1 - alpha) * v + alpha * record["policy"][n] for n, v in expected.items()}
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-6, atol=1e-7, msg=name)


def test_reference_follows_the_soft_update_at_each_sync_step(padded):
    trainer, records, initial = padded
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    _assert_soft_updates(
        records, initial, params(trainer.ref_model), SYNC["ref_model_mixup_alpha"], SYNC["ref_model_sync_steps"]
    )
    # Between syncs the reference stands still; at a sync it moves.
    assert all(torch.equal(records[0]["ref"][n], records[1]["ref"][n]) for n in initial)
    assert not torch.equal(records[2]["ref"]["lm_head.weight"], records[1]["ref"]["lm_head.weight"])


def test_a_model_built_in_memory_gets_a_reference_copy_that_is_updated(tokenizer, tmp_path):
    """A policy with no path: IPOTrainer copies it as the reference, and that copy is the one the updates move."""
    from trl_ipo.lab.tiny import build_model

    def in_memory():
        model = build_model(tokenizer, seed=0)
        model.config._name_or_path = ""  # built here, not loaded: TRL could not reload a reference
        return model

    callback = WeightsAtStepEnd()
    initial = params(in_memory())
    trainer = _train(
        IPOTrainer, IPOConfig, in_memory, tokenizer, tmp_path, callback, max_steps=4, ref_model_sync_steps=1
    )
    assert trainer.ref_model is not trainer.model
    _assert_soft_updates(callback.records, initial, params(trainer.ref_model), SYNC["ref_model_mixup_alpha"], 1)
    assert not torch.equal(params(trainer.ref_model)["lm_head.weight"], initial["lm_head.weight"])


def test_without_sync_the_same_run_differs_after_the_first_sync(padded, load_model, tokenizer, tmp_path):
    ours, _, _ = padded
    fixed = _train(IPOTrainer, IPOConfig, load_model, tokenizer, tmp_path, sync_ref_model=False)
    a, b = _losses(ours), _losses(fixed)
    period = SYNC["ref_model_sync_steps"]
    assert a[:period] == pytest.approx(b[:period], rel=1e-6)  # same run up to the first update
    assert abs(a[period] - b[period]) > 1e-4


# ---------------------------------------------------------------------------------------------- packed layouts
@pytest.mark.parametrize(
    "layout", [dict(prefix_sharing=True), dict(padding_free=True)], ids=["prefix_sharing", "padding_free"]
)
def test_packed_layouts_give_the_padded_losses_and_reference(padded, load_model, tokenizer, tmp_path, layout):
    ours, _, _ = padded
    packed = _train(IPOTrainer, IPOConfig, load_model, tokenizer, tmp_path, **layout)
    assert _losses(packed) == pytest.approx(_losses(ours), rel=1e-5, abs=1e-7)
    for model_name in ("model", "ref_model"):
        pa, pb = params(getattr(packed, model_name)), params(getattr(ours, model_name))
        for name in pa:
            torch.testing.assert_close(
                pa[name], pb[name], rtol=1e-4, atol=1e-6, msg=lambda m, where=f"{model_name}.{name}": f"{where}: {m}"
            )


# ------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            dict(precompute_ref_log_probs=True),
            r"IPOConfig\.sync_ref_model=True with precompute_ref_log_probs=True: .* stale",
        ),
        (dict(ref_model_mixup_alpha=1.5), r"IPOConfig\.ref_model_mixup_alpha=1\.5: .*\[0, 1\]"),
        (dict(ref_model_sync_steps=0), r"IPOConfig\.ref_model_sync_steps=0: .*>= 1"),
    ],
)
def test_config_refuses_what_cannot_sync(tmp_path, overrides, message):
    with pytest.raises(InputError, match=message):
        IPOConfig(**cpu_args(tmp_path, **{**SYNC, **overrides}))


def test_peft_is_refused_before_trl_builds_anything(tiny_dir, tokenizer, load_model, tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from trl import DPOTrainer

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")

    def trl_init(*args, **kwargs):
        raise AssertionError("DPOTrainer.__init__ ran")

    monkeypatch.setattr(DPOTrainer, "__init__", trl_init)
    message = r"IPOConfig\.sync_ref_model=True with a PEFT model: .*Set sync_ref_model=False"
    for model, peft_config in ((tiny_dir, lora), (get_peft_model(load_model(), lora), None)):
        with pytest.raises(InputError, match=message):
            IPOTrainer(
                model=model,
                args=IPOConfig(**cpu_args(tmp_path, **SYNC)),
                train_dataset=Dataset.from_list(ROWS),
                processing_class=tokenizer,
                peft_config=peft_config,
            )


# ------------------------------------------------------------------------------------------ ZeRO-3, two ranks
@pytest.mark.slow
def test_zero3_on_two_ranks_gives_the_single_process_losses_and_weights(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ipo.distributed import resolve_config

    ds_config = json.loads(Path(resolve_config("zero3")).read_text())
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # shard every tensor of a tiny model
    ds_path = tmp_path / "zero3_tiny.json"
    ds_path.write_text(json.dumps(ds_config))
    args = cpu_args(tmp_path / "zero3-run", **RUN, per_device_train_batch_size=2, deepspeed=str(ds_path))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": tiny_dir, "rows": ROWS, "out": str(tmp_path / "out"), "args": args}))
    proc = torchrun_two_ranks(WORKER, spec, env={"DS_ACCELERATOR": "cpu"}, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert all("DEEPSPEED" in r["distributed_type"] for r in ranks)
    assert all(r["reference_partitioned"] for r in ranks)

    def load_model():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)

    single = _train(
        IPOTrainer, IPOConfig, load_model, AutoTokenizer.from_pretrained(tiny_dir), tmp_path / "single",
        per_device_train_batch_size=4,
    )  # fmt: skip
    for record in ranks:
        assert record["losses"] == pytest.approx(_losses(single), rel=1e-5, abs=1e-7)
    for model_name in ("model", "ref_model"):
        gathered = load_file(str(tmp_path / "out" / f"{model_name}.safetensors"))
        ours = params(getattr(single, model_name))
        assert gathered.keys() == ours.keys()
        for name in ours:
            torch.testing.assert_close(
                gathered[name],
                ours[name],
                rtol=1e-4,
                atol=1e-6,
                msg=lambda m, where=f"{model_name}.{name}": f"{where}: {m}",
            )


# ------------------------------------------------------------------------------------- scripts/tr_ipo_drift.py
def test_drift_script_records_margins_against_the_moving_and_the_initial_reference(tiny_dir, tmp_path):
    """The script's hand-computed margins agree with the trainer's ipo/delta; with α = 1 each update makes the
    reference the policy (Δ against it restarts at 0) while the margin against the initial model carries on."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "tr_ipo_drift.py"
    spec = importlib.util.spec_from_file_location("tr_ipo_drift", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with global_rng_restored():
        result = script.run(
            tmp_path, tiny_dir, pairs=4, sync_steps=3, periods=2, alpha=1.0, beta=0.5, learning_rate=0.05
        )
    assert json.loads((tmp_path / "tr_ipo_drift.json").read_text()) == result
    assert (tmp_path / "tr_ipo_drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["steps"] == list(range(1, 7))
    assert result["sync_after_steps"] == [3, 6]
    assert result["target"] == pytest.approx(1.0)  # t/β = ½ / 0.5
    assert result["delta_vs_reference"] == pytest.approx(result["ipo_delta_logged"], rel=1e-4, abs=1e-6)
    assert result["delta_vs_reference"][3] == pytest.approx(0.0, abs=1e-6)  # step 4 trains against the copy
    assert result["delta_vs_initial"][:3] == pytest.approx(result["delta_vs_reference"][:3], abs=1e-9)
    assert result["delta_vs_initial"][3] > 0.1  # what the first period gained is kept
