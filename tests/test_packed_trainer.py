"""prefix_sharing / padding_free against the default (padded) path of IPOTrainer: loss, gradients, every metric.

S = prefix sharing, Pf = padding-free, SP = both. The default path is the independent computation: two rows per
pair, each carrying the full prompt, right-padded.
"""

import random
import warnings

import pytest
import torch
from conftest import WORDS, cpu_args, make_pairs
from datasets import Dataset
from launch import REPO, Job, deepspeed_two_ranks, launch_env, tiny_zero3_config
from trainer_utils import build, loss_and_grads, params, tiny_moe_loader

from trl_ipo import IPOConfig, IPOTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUTS = {
    "S": dict(prefix_sharing=True),
    "Pf": dict(padding_free=True),
    "SP": dict(prefix_sharing=True, padding_free=True),
}
ROWS = make_pairs(8, seed=3, preference=True)
TIMING_KEYS = {
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "epoch",
    "total_flos",
}


def _perturb(trainer):
    """Move the policy off the reference so that Δ ≠ 0 and every comparison is non-trivial."""
    with torch.no_grad():
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.cos(torch.arange(p.numel(), dtype=torch.float32) * 0.37).view_as(p).to(p.dtype))
    return trainer


def _assert_grads_equal(grads_b, grads_a):
    """Equal to fp32 rounding: element-wise within 1e-4 relative, or 1e-5 of the tensor's largest entry."""
    assert grads_a.keys() == grads_b.keys()
    assert len(grads_a) > 0
    for name, a in grads_a.items():
        torch.testing.assert_close(grads_b[name], a, rtol=1e-4, atol=1e-5 * a.abs().max().item(), msg=name)


def _last_metrics(trainer, mode="train"):
    return {k: v[-1] for k, v in trainer._metrics[mode].items() if v}


def _assert_metrics_equal(a, b, rel=1e-5, abs_=1e-5):
    assert a.keys() == b.keys()
    assert any(k.startswith("ipo/") for k in a)
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=rel, abs=abs_), key


def _compare_step(load_model, tokenizer, rows, tmp_path, layouts=("S", "Pf", "SP"), **overrides):
    """One compute_loss + backward on the whole set, default vs each layout."""
    base = _perturb(build(IPOTrainer, IPOConfig, load_model, tokenizer, rows, tmp_path / "base", **overrides))
    loss_a, grads_a = loss_and_grads(base)
    metrics_a = _last_metrics(base)
    assert abs(metrics_a["ipo/delta"]) > 1e-3  # the policy really moved
    for name in layouts:
        packed = _perturb(
            build(IPOTrainer, IPOConfig, load_model, tokenizer, rows, tmp_path / name, **overrides, **LAYOUTS[name])
        )
        loss_b, grads_b = loss_and_grads(packed)
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0, msg=name)
        _assert_grads_equal(grads_b, grads_a)
        _assert_metrics_equal(metrics_a, _last_metrics(packed))


LOSS_SETTINGS = {
    "hard-sym-paper-mean": dict(),
    "soft-asym-scaled-sum": dict(preference_column="q", symmetric=False, loss_form="scaled", logp_reduction="sum"),
    "soft-sym-sum-sft": dict(
        preference_column="q", logp_reduction="sum", loss_type=["ipo", "sft"], loss_weights=[1.0, 0.5]
    ),
    "hard-asym-scaled-mean": dict(symmetric=False, loss_form="scaled"),
    "trl-modifiers": dict(preference_column="q", ld_alpha=0.5, f_divergence_type="js_divergence", use_weighting=True),
}


@pytest.mark.compat
@pytest.mark.parametrize("setting", list(LOSS_SETTINGS))
def test_loss_gradients_and_metrics_equal_the_default_path(setting, load_model, tokenizer, tmp_path):
    _compare_step(load_model, tokenizer, ROWS, tmp_path, **LOSS_SETTINGS[setting])


def _sentence(rng, n):
    return " ".join(rng.choices(WORDS, k=n))


def _uneven_rows():
    """Chosen and rejected of very different lengths, and very short pairs next to very long ones."""
    rng = random.Random(5)
    rows = []
    for i in range(8):
        prompt = _sentence(rng, 1 if i % 2 else 40)
        short, long_ = " " + _sentence(rng, 1), " " + _sentence(rng, 30)
        chosen, rejected = (short, long_) if i % 4 < 2 else (long_, short)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def test_uneven_lengths_and_mixed_short_long_pairs(load_model, tokenizer, tmp_path):
    _compare_step(load_model, tokenizer, _uneven_rows(), tmp_path)


def test_conversational_data(load_model, tokenizer, tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in ROWS
    ]
    _compare_step(load_model, tokenizer, rows, tmp_path, layouts=("SP",))


def test_truncation_keep_start_reaches_the_loss_with_the_same_tokens(load_model, tokenizer, tmp_path):
    _compare_step(load_model, tokenizer, _uneven_rows(), tmp_path, layouts=("S", "SP"), max_length=24)


def test_keep_end_truncation_warns_with_a_count_and_keeps_the_loss(load_model, tokenizer, tmp_path):
    kw = dict(max_length=24, truncation_mode="keep_end")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compare_step(load_model, tokenizer, _uneven_rows(), tmp_path, layouts=("SP",), **kw)
    messages = [str(w.message) for w in caught if "prefix_sharing:" in str(w.message)]
    assert messages
    assert all(m.split()[1].isdigit() and int(m.split()[1]) > 0 for m in messages)


# ----------------------------------------------------------------------------------------------- training runs
def _history(trainer):
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in trainer.state.log_history]


def _compare_runs(make, tmp_path, layout="SP", **overrides):
    base, packed = make(tmp_path / "base", **overrides), make(tmp_path / layout, **overrides, **LAYOUTS[layout])
    base.train()
    packed.train()
    ha, hb = _history(base), _history(packed)
    assert len(ha) == len(hb) >= 2
    for a, b in zip(ha, hb, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key
    losses = [h["loss"] for h in ha if "loss" in h]
    assert len(set(round(x, 5) for x in losses)) > 1  # training moved the policy
    pa, pb = params(base.model), params(packed.model)
    for name in pa:
        torch.testing.assert_close(pb[name], pa[name], rtol=1e-4, atol=1e-6, msg=name)
    return base, packed


RUN = dict(optim="sgd", learning_rate=0.05, max_steps=3, preference_column="q")
FEATURES = {
    "gradient-checkpointing": dict(gradient_checkpointing=True),
    "precompute-ref": dict(precompute_ref_log_probs=True),
    "gradient-accumulation": dict(per_device_train_batch_size=2, gradient_accumulation_steps=2),
    "evaluation": dict(eval_strategy="steps", eval_steps=1),
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_training_runs_log_the_same(feature, load_model, tokenizer, tmp_path):
    def make(out, **kw):
        return IPOTrainer(
            model=load_model(),
            args=IPOConfig(**cpu_args(out, **RUN, **kw)),
            train_dataset=Dataset.from_list(ROWS),
            eval_dataset=Dataset.from_list(make_pairs(6, seed=9, preference=True)),
            processing_class=tokenizer,
        )

    base, packed = _compare_runs(make, tmp_path, **FEATURES[feature])
    if feature == "evaluation":
        assert any("eval_ipo/delta" in h for h in base.state.log_history)
    if feature == "precompute-ref":
        assert packed.ref_model is None
        assert "ref_chosen_logps" in packed.train_dataset.column_names


def test_peft_lora_reference_is_the_adapter_disabled_model(load_model, tokenizer, tmp_path):
    from peft import LoraConfig

    def make(out, **kw):
        lora = LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False
        )
        return IPOTrainer(
            model=load_model(),
            args=IPOConfig(**cpu_args(out, **RUN, **kw)),
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
            peft_config=lora,
        )

    base, packed = _compare_runs(make, tmp_path)
    assert packed.ref_model is None
    assert base._metrics is not None


def test_bf16_within_bf16_tolerance(load_model, tokenizer, tmp_path):
    base = _perturb(build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "a", bf16=True))
    packed = _perturb(
        build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "b", bf16=True, **LAYOUTS["SP"])
    )
    loss_a, grads_a = loss_and_grads(base)
    loss_b, grads_b = loss_and_grads(packed)
    torch.testing.assert_close(loss_b, loss_a, rtol=2e-2, atol=0)
    flat_a = torch.cat([g.flatten() for g in grads_a.values()])
    flat_b = torch.cat([grads_b[k].flatten() for k in grads_a])
    assert torch.nn.functional.cosine_similarity(flat_a, flat_b, dim=0) > 0.99
    assert (flat_a - flat_b).norm() < 0.05 * flat_a.norm()
    _assert_metrics_equal(_last_metrics(base), _last_metrics(packed), rel=2e-2, abs_=2e-2)


@pytest.mark.compat
def test_moe_router_aux_loss_is_kept(tokenizer, tmp_path):
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    load = tiny_moe_loader(
        Qwen2MoeConfig,
        Qwen2MoeForCausalLM,
        tokenizer,
        intermediate_size=64,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        num_experts=4,
    )

    _compare_step(load, tokenizer, ROWS, tmp_path, layouts=("SP",))


# --------------------------------------------------------------------------------------------------- refusals
def _trainer(model, tmp_path, peft_config=None, **kw):
    return IPOTrainer(
        model=model,
        args=IPOConfig(**cpu_args(tmp_path, **kw)),
        train_dataset=Dataset.from_list(ROWS),
        peft_config=peft_config,
    )


def test_flash_attention_with_prefix_sharing_is_refused_before_training(load_model, tmp_path):
    model = load_model()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"prefix_sharing=True.*flash_attention_2.*'sdpa' or 'eager'"):
        _trainer(model, tmp_path, prefix_sharing=True)


def test_prompt_learning_peft_is_refused(load_model, tmp_path):
    from peft import PromptTuningConfig, TaskType

    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    with pytest.raises(ValueError, match=r"padding_free=True.*PEFT prompt learning.*LoRA"):
        _trainer(load_model(), tmp_path, peft_config=config, padding_free=True)


def test_model_whose_attention_ignores_4d_masks_is_refused(load_model, tmp_path):
    model = load_model()

    class LegacyAttention(type(model)):
        _supports_attention_backend = False

    model.__class__ = LegacyAttention
    with pytest.raises(ValueError, match=r"prefix_sharing=True: LegacyAttention .* 4D mask"):
        _trainer(model, tmp_path, prefix_sharing=True)


# ------------------------------------------------------------------------------------------ ZeRO-3, 2 CPU ranks
@pytest.mark.slow
def test_zero3_two_ranks_with_shared_packed_batches_equal_one_padded_process(tiny_dir, tmp_path):
    """The deepspeed launcher, 2 CPU ranks, ZeRO-3 (every tensor sharded), SP; against one process, default path."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = make_pairs(16, seed=7, preference=True)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = dict(max_steps=3, preference_column="q", learning_rate=1e-3)
    args = cpu_args(
        tmp_path / "zero3-run",
        per_device_train_batch_size=2,
        deepspeed=tiny_zero3_config(tmp_path),
        ddp_timeout=90,
        **run,
        **LAYOUTS["SP"],
    )
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": tiny_dir, "data": str(data), "out": str(tmp_path / "out"), "args": args}))
    worker = REPO / "tests" / "workers" / "packed_ipo.py"
    job = Job("zero3", tmp_path, [deepspeed_two_ranks(worker, spec)], launch_env(), out=tmp_path / "out")
    try:
        single = IPOTrainer(  # meanwhile: one process, global batch, padded layout
            model=AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
            args=IPOConfig(**cpu_args(tmp_path / "single", per_device_train_batch_size=4, **run)),
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(tiny_dir),
        )
        single.train()
        records = list(job.finished().values())
    finally:
        job.stop()
    expected = [h for h in single.state.log_history if "loss" in h]
    for record in records:
        assert record["num_processes"] == 2
        assert record["distributed_type"] == "DistributedType.DEEPSPEED"
        assert record["policy"]["num_partitioned"] == record["policy"]["num_params"] > 0
        assert record["packed_calls"] == 2 * 3  # policy and reference, 3 steps
        assert record["layouts_built"] == 3  # one layout per step, shared by both forwards
        got = [h for h in record["history"] if "loss" in h]
        assert len(got) == len(expected) == 3
        for a, b in zip(expected, got, strict=True):
            keys = (set(a) & set(b)) - TIMING_KEYS - {"grad_norm"}
            assert {"loss", "ipo/delta", "rewards/margins", "entropy", "logits/chosen", "num_tokens"} <= keys
            for key in keys:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key
    losses = [h["loss"] for h in expected]
    assert len(set(round(x, 5) for x in losses)) == 3  # the optimiser moved the policy between steps
