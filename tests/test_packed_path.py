"""trl_ipo.packed as the trainer uses it: one layout per step, one host synchronisation, support by verification.

The independent computation throughout is the padded layout: a plain forward over right-padded rows, log-softmax,
gather of the completion tokens.
"""

import collections
import contextlib
import logging

import pytest
import torch
from conftest import cpu_args, make_pairs
from datasets import Dataset
from trainer_utils import build, full_batch, loss_and_grads, tiny_moe_loader

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.packed import VERIFIED_MODEL_TYPES, PackedPath, support
from trl_ipo.packed.forward import install_packed_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = make_pairs(8, seed=3, preference=True)
SP = dict(prefix_sharing=True, padding_free=True)
HOST_SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


@contextlib.contextmanager
def counting_host_syncs():
    """Count every tensor → Python/host read (the calls that wait for the device on an accelerator)."""
    counts = collections.Counter()
    originals = {name: getattr(torch.Tensor, name) for name in HOST_SYNCS}

    def counting(name, original):
        def method(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    for name, original in originals.items():
        setattr(torch.Tensor, name, counting(name, original))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


# ------------------------------------------------------------------------------------------- one step, one sync
def test_one_packed_step_builds_one_layout_with_one_host_sync(load_model, tokenizer, tmp_path):
    trainer = build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path, **SP)
    batch = full_batch(trainer)
    forward = trainer.packed.forward
    inside = collections.Counter()

    def counted(*args, **kwargs):
        with counting_host_syncs() as counts:
            result = forward(*args, **kwargs)
        inside.update(counts)
        return result

    trainer.packed.forward = counted
    with counting_host_syncs() as packed_step:
        loss_and_grads(trainer, batch)
    assert trainer.packed.forward_calls == 2
    assert trainer.packed.layouts_built == 1
    assert sum(inside.values()) == 1
    assert inside["tolist"] == 1

    padded = build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "padded")
    with counting_host_syncs() as padded_step:
        loss_and_grads(padded, full_batch(padded))
    assert sum(packed_step.values()) <= sum(padded_step.values()) + 1  # no more than the padded step's, plus one


def test_the_next_batch_gets_a_new_layout(load_model, tokenizer, tmp_path):
    trainer = build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path, **SP)
    trainer.train()  # 3 steps
    assert trainer.packed.layouts_built == 3
    assert trainer.packed.forward_calls == 6


# ---------------------------------------------------------------------------------------- the verified table
def _padded_log_probs(model, input_ids, attention, completion):
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    per_token = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return per_token * (completion[:, 1:] * attention[:, 1:])


def _batch(vocab, seed=0):
    """Three pairs with prompts, chosen and rejected of different lengths, right-padded as TRL collates them."""
    lengths = [(5, 3, 1), (2, 1, 4), (6, 3, 2)]
    comps = []
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (p,), generator=g).tolist() for p, _, _ in lengths]
    chosen = [torch.randint(3, vocab, (c,), generator=g).tolist() for _, c, _ in lengths]
    rejected = [torch.randint(3, vocab, (r,), generator=g).tolist() for _, _, r in lengths]
    seqs = [(p, c) for p, c in zip(prompts, chosen, strict=True)] + [
        (p, r) for p, r in zip(prompts, rejected, strict=True)
    ]
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, (p, c) in enumerate(seqs):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention[i, : len(p) + len(c)] = 1
        comps.append([0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c)))
    return ids, attention, torch.tensor(comps)


_SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=128,
    rotary_dim=4,
    query_pre_attn_scalar=8,
    moe_intermediate_size=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_EXTRA = {
    "qwen2_moe": dict(num_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=16),
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "granitemoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2": dict(use_sliding_window=True, max_window_layers=1, sliding_window=3),
    "mistral": dict(sliding_window=3),
    "gemma2": dict(sliding_window=3),
    "gemma3_text": dict(sliding_window=3),
    "cohere2": dict(sliding_window=3),
    "gpt_neox": dict(rotary_pct=0.5),
}


def tiny_model(model_type, attn="eager"):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**_SMALL, **_EXTRA.get(model_type, {})})
    config._attn_implementation = attn
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn).eval()


def _packed_log_probs(model, batch, **layout):
    install_packed_forward(model, outputs=("log_probs",))
    path = PackedPath(IPOConfig(output_dir="unused", bf16=False, use_cpu=True, **layout))
    path._checked.add(id(model))  # compare here, not in the start-up self-check
    ids, attention, completion = batch
    inputs = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
    with torch.no_grad():
        return path.forward(model, inputs, dtype=torch.float32).log_probs


@pytest.mark.parametrize("model_type", sorted(VERIFIED_MODEL_TYPES))
def test_verified_model_type_is_exact(model_type):
    """Every type in the table: packed log-probs (S and SP) equal the padded forward's to fp32 rounding."""
    model = tiny_model(model_type)
    assert support.model_type(model) == model_type
    support.check_packing_support(model, IPOConfig(output_dir="unused", use_cpu=True, bf16=False, **SP))
    batch = _batch(model.config.get_text_config().vocab_size)
    expected = _padded_log_probs(model, *batch)
    for layout in (dict(prefix_sharing=True), SP):
        got = _packed_log_probs(model, batch, **layout)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5, msg=f"{model_type} {layout}")


# ------------------------------------------------------------------------------------------- the self-check
def test_an_unverified_type_is_self_checked_on_its_first_batch(load_model, tokenizer, tmp_path, monkeypatch, caplog):
    monkeypatch.delitem(support.VERIFIED_MODEL_TYPES, "qwen2")
    trainer = build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path, **SP)
    with caplog.at_level(logging.WARNING, logger=support.__name__):
        loss_and_grads(trainer)
        loss_and_grads(trainer)
    lines = [r.getMessage() for r in caplog.records if "self-check ran" in r.getMessage()]
    assert len(lines) == 2  # once for the policy, once for the reference; not again on the next step
    assert "the policy (model_type='qwen2'" in lines[0]
    assert "the reference (model_type='qwen2'" in lines[1]


def test_a_self_check_that_fails_stops_training(load_model, tokenizer, tmp_path, monkeypatch):
    """A layout the model does not really take (here: the mask stripped of its segments) is caught."""
    from trl_ipo.packed import path as path_module

    monkeypatch.delitem(support.VERIFIED_MODEL_TYPES, "qwen2")
    monkeypatch.setattr(path_module, "layout_attention_mask", lambda model, layout, dtype: None)
    trainer = build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path, **SP)
    with pytest.raises(ValueError, match=r"self-check failed for the policy \(model_type='qwen2'\).*differ by up to"):
        loss_and_grads(trainer)


# ----------------------------------------------------------------------------------------------- refusals
def _trainer(model, tmp_path, ref_model=None, rows=ROWS, **kw):
    return IPOTrainer(
        model=model,
        ref_model=ref_model,
        args=IPOConfig(**cpu_args(tmp_path, **kw)),
        train_dataset=Dataset.from_list(rows),
    )


def test_an_explicit_reference_is_checked_too(load_model, tmp_path):
    reference = load_model()

    class LegacyAttention(type(reference)):
        _supports_attention_backend = False

    reference.__class__ = LegacyAttention
    with pytest.raises(ValueError, match=r"prefix_sharing=True: LegacyAttention .* 4D mask"):
        _trainer(load_model(), tmp_path, ref_model=reference, prefix_sharing=True)


def test_a_vision_language_model_is_refused_before_training(tmp_path):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        text_config=dict(model_type="llama", **{k: _SMALL[k] for k in ("vocab_size", "hidden_size")}),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=8,
            patch_size=4,
        ),
        image_token_index=5,
    )
    model = LlavaForConditionalGeneration(config)
    with pytest.raises(ValueError, match=r"padding_free=True: the policy .*multimodal.*pixel_values"):
        _trainer(model, tmp_path, padding_free=True)


def test_a_batch_with_image_inputs_is_refused_by_name():
    args = IPOConfig(output_dir="unused", use_cpu=True, bf16=False, prefix_sharing=True)
    inputs = {"input_ids": torch.ones(2, 3), "pixel_values": torch.zeros(2, 3, 8, 8), "image_sizes": None}
    with pytest.raises(ValueError, match=r"the batch carries \['pixel_values'\]"):
        support.check_batch_inputs(inputs, args)


# ------------------------------------------------------------------------------------- MoE: num_local_experts
@pytest.mark.parametrize("layout", [{}, SP], ids=["padded", "SP"])
def test_moe_config_naming_num_local_experts_trains_with_its_router_loss(tokenizer, tmp_path, layout):
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

    load = tiny_moe_loader(
        GraniteMoeConfig, GraniteMoeForCausalLM, tokenizer, intermediate_size=16, num_local_experts=4
    )

    trainer = build(IPOTrainer, IPOConfig, load, tokenizer, ROWS, tmp_path, **layout)
    loss, _ = loss_and_grads(trainer)
    aux = trainer._metrics["train"]["aux_loss"][-1]
    ipo_term = trainer._metrics["train"]["ipo/sq_error"][-1]
    assert aux > 0
    assert loss.item() == pytest.approx(ipo_term + 0.1 * aux, rel=1e-5)
