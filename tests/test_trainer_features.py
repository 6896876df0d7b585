"""Everything TRL's DPOTrainer accepts keeps working under IPOTrainer, checked against numbers, not just "it ran"."""

import pytest
import torch
from conftest import cpu_args, make_pairs
from datasets import Dataset
from trainer_utils import assert_grads_close, build, loss_and_grads, params
from trl import DPOConfig, DPOTrainer

from trl_ipo import IPOConfig, IPOTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")  # Trainer reseeds the global generators

ROWS = make_pairs(8, seed=2, preference=True)
FIRST_LOSS = (0.5 / 0.1) ** 2  # policy = reference at initialisation: Δ = 0, hard target 1/(2β)


@pytest.fixture
def ipo(load_model, tokenizer, tmp_path):
    """``ipo(folder, **overrides)``: an IPOTrainer on ROWS writing to ``tmp_path / folder``."""

    def make(folder, **overrides):
        return build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / folder, **overrides)

    return make


def _history(trainer, key="loss"):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_peft_lora_reference_is_adapter_disabled(load_model, tokenizer, tmp_path):
    from peft import LoraConfig

    trainer = IPOTrainer(
        model=load_model(),
        args=IPOConfig(**cpu_args(tmp_path, max_steps=2, learning_rate=1e-2)),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    assert trainer.ref_model is None
    base_before = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora" not in n}
    lora_before = {n: p.clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    losses = _history(trainer)
    assert losses[0] == pytest.approx(FIRST_LOSS, rel=1e-6)  # zero-init LoRA: policy = reference
    assert losses[1] != pytest.approx(FIRST_LOSS, rel=1e-6)
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base_before.items())  # base frozen
    assert any(not torch.equal(after[n], p) for n, p in lora_before.items())  # adapter trained


@pytest.mark.compat
def test_precompute_ref_log_probs_matches_online_reference(load_model, tokenizer, tmp_path, ipo):
    online = ipo("a", preference_column="q")
    pre = ipo(
        "b",
        preference_column="q",
        precompute_ref_log_probs=True,
    )
    assert pre.ref_model is None
    assert "ref_chosen_logps" in pre.train_dataset.column_names
    online.train()
    pre.train()
    for key in ("loss", "ipo/delta", "rewards/margins"):
        assert _history(pre, key) == pytest.approx(_history(online, key), rel=1e-5, abs=1e-6), key


CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": r["prompt"]}],
        "chosen": [{"role": "assistant", "content": r["chosen"]}],
        "rejected": [{"role": "assistant", "content": r["rejected"]}],
    }
    for r in ROWS
]
IMPLICIT = [{"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in ROWS]
IMPLICIT_CONVERSATIONAL = [
    {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]} for r in CONVERSATIONAL
]


@pytest.mark.parametrize(
    "rows",
    [CONVERSATIONAL, IMPLICIT, IMPLICIT_CONVERSATIONAL],
    ids=["conversational", "implicit-prompt", "implicit-conversational"],
)
def test_dataset_formats_match_stock_trl(rows, load_model, tokenizer, tmp_path):
    ours = build(IPOTrainer, IPOConfig, load_model, tokenizer, rows, tmp_path / "a")
    stock = build(DPOTrainer, DPOConfig, load_model, tokenizer, rows, tmp_path / "b", loss_type=["ipo"])
    ours.train()
    stock.train()
    assert _history(ours)[0] == pytest.approx(FIRST_LOSS, rel=1e-6)
    assert _history(ours) == pytest.approx(_history(stock), rel=1e-5)


def test_gradient_accumulation_equals_full_batch(load_model, tokenizer, tmp_path, ipo):
    full = ipo("a", preference_column="q", max_steps=2)
    accum = ipo(
        "b",
        preference_column="q",
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    full.train()
    accum.train()
    assert _history(accum) == pytest.approx(_history(full), rel=1e-5)
    pa, pb = params(full.model), params(accum.model)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-5, atol=1e-6)


def test_evaluation_logs_ipo_metrics_with_eval_prefix(load_model, tokenizer, tmp_path):
    beta = 0.25
    trainer = IPOTrainer(
        model=load_model(),
        args=IPOConfig(**cpu_args(tmp_path, beta=beta, preference_column="q", per_device_eval_batch_size=6)),
        train_dataset=Dataset.from_list(ROWS),
        eval_dataset=Dataset.from_list(make_pairs(6, seed=9, preference=True)),
        processing_class=tokenizer,
    )
    metrics = trainer.evaluate()
    eval_q = torch.tensor([r["q"] for r in make_pairs(6, seed=9, preference=True)])
    assert metrics["eval_ipo/delta"] == 0.0  # untrained: policy = reference
    assert metrics["eval_ipo/target"] == pytest.approx(((eval_q - 0.5) / beta).mean().item(), rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_ipo/sq_error"], rel=1e-5)
    assert metrics["eval_loss"] == pytest.approx((((eval_q - 0.5) / beta) ** 2).mean().item(), rel=1e-5)
    for key in ("eval_rewards/margins", "eval_ipo/residual", "eval_logps/chosen"):
        assert key in metrics


def test_save_and_resume_from_checkpoint(load_model, tokenizer, tmp_path, ipo):
    straight = ipo("a", max_steps=4, per_device_train_batch_size=2)
    straight.train()
    first = ipo(
        "b",
        max_steps=4,
        per_device_train_batch_size=2,
        save_strategy="steps",
        save_steps=2,
    )
    first.train()
    resumed = ipo("b", max_steps=4, per_device_train_batch_size=2)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    pa, pb = params(straight.model), params(resumed.model)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "b" / "README.md").exists()  # model card written when the checkpoint is saved


def test_model_as_path_and_explicit_ref_model(tiny_dir, load_model, tokenizer, tmp_path):
    by_path = IPOTrainer(
        model=tiny_dir,
        args=IPOConfig(**cpu_args(tmp_path / "a")),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    explicit_ref = IPOTrainer(
        model=load_model(),
        ref_model=load_model(),
        args=IPOConfig(**cpu_args(tmp_path / "b")),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    by_path.train()
    explicit_ref.train()
    assert _history(by_path)[0] == pytest.approx(FIRST_LOSS, rel=1e-6)
    assert _history(by_path) == pytest.approx(_history(explicit_ref), rel=1e-5)


@pytest.mark.compat
def test_ipo_plus_sft_matches_stock_trl(load_model, tokenizer, tmp_path, ipo):
    kw = dict(loss_type=["ipo", "sft"], loss_weights=[1.0, 0.3])
    ours = ipo("a", **kw)
    stock = build(DPOTrainer, DPOConfig, load_model, tokenizer, ROWS, tmp_path / "b", **kw)
    loss_a, grads_a = loss_and_grads(ours)
    loss_b, grads_b = loss_and_grads(stock)
    assert loss_a.item() > FIRST_LOSS  # the NLL term is really there
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    assert_grads_close(grads_a, grads_b)


def test_dpo_config_is_accepted_as_ipo(load_model, tokenizer, tmp_path):
    trainer = IPOTrainer(
        model=load_model(),
        args=DPOConfig(**cpu_args(tmp_path, beta=0.2)),
        train_dataset=Dataset.from_list(ROWS),
        processing_class=tokenizer,
    )
    assert isinstance(trainer.args, IPOConfig)
    assert trainer.args.loss_type == ["ipo"]
    assert trainer.args.beta == 0.2
    loss, _ = loss_and_grads(trainer)
    assert loss.item() == pytest.approx((0.5 / 0.2) ** 2, rel=1e-6)
