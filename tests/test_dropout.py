"""disable_dropout=True also switches off functional dropout (OPT, GPT-BigCode): Δ = 0 and loss = (0 − t/β)² at step 0."""

import pytest
import torch
from conftest import cpu_args, make_pairs
from datasets import Dataset

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.dropout import disable_dropout, is_dropout_name

pytestmark = pytest.mark.usefixtures("restore_global_rng")

BETA = 0.1


def _opt(vocab):
    from transformers import OPTConfig, OPTForCausalLM

    config = OPTConfig(
        vocab_size=vocab,
        hidden_size=16,
        word_embed_proj_dim=16,
        ffn_dim=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        dropout=0.5,
        attention_dropout=0.5,
        activation_dropout=0.5,
        pad_token_id=0,
    )
    return OPTForCausalLM(config)


def _bigcode(vocab):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    config = GPTBigCodeConfig(
        vocab_size=vocab,
        n_embd=16,
        n_layer=2,
        n_head=2,
        n_positions=128,
        attn_pdrop=0.5,
        resid_pdrop=0.5,
        embd_pdrop=0.5,
    )
    return GPTBigCodeForCausalLM(config)


@pytest.mark.parametrize("build", [_opt, _bigcode], ids=["opt", "gpt_bigcode"])
def test_disable_dropout_makes_train_mode_forward_deterministic(build, tokenizer):
    torch.manual_seed(0)
    model = build(len(tokenizer)).train()
    ids = torch.randint(0, len(tokenizer), (2, 12))
    # Without the functional dropout switched off, two train-mode forwards differ (the test can fail).
    assert not torch.equal(model(ids).logits, model(ids).logits)
    disable_dropout(model)
    assert torch.equal(model(ids).logits, model(ids).logits)
    floats = [
        (name, value)
        for module in [*model.modules(), model.config]
        for name, value in vars(module).items()
        if isinstance(value, float) and is_dropout_name(name)
    ]
    assert floats
    assert all(value == 0.0 for _, value in floats)


def test_dropout_names():
    for name in ("dropout", "attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout_prob"):
        assert is_dropout_name(name)
    for name in ("layer_norm_eps", "initializer_range", "rope_theta", "dropout_mask_id"):
        assert not is_dropout_name(name)


@pytest.mark.parametrize("build", [_opt, _bigcode], ids=["opt", "gpt_bigcode"])
def test_step0_loss_is_the_ipo_loss_at_zero_margin(build, tokenizer, tmp_path):
    """Hard labels, symmetric=True, paper form: t = ½, so the step-0 loss is (0 − ½/β)² = 25 at β = 0.1."""
    torch.manual_seed(0)
    model = build(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = Dataset.from_list(make_pairs(8, seed=3))
    args = IPOConfig(**cpu_args(tmp_path, max_steps=1, beta=BETA, disable_dropout=True, learning_rate=0.0))
    trainer = IPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    first = next(h for h in trainer.state.log_history if "loss" in h)
    assert first["ipo/delta"] == pytest.approx(0.0, abs=1e-6)
    assert first["loss"] == pytest.approx((0.0 - 0.5 / BETA) ** 2, rel=1e-6)
