"""OnlineIPOTrainer on a tiny local model: against TRL's OnlineDPOTrainer, ties, gradient accumulation, swap
invariance and the logged metrics, with the sampled pairs injected so that both sides see the same completions."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from trl_ipo import _compat
from trl_ipo.online import OnlineIPOConfig, OnlineIPOTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")

PROMPTS = ["the cat sat", "a dog ran", "big red sun", "the moon sat"]
# prompt -> (completion a, completion b, whether each ends with EOS). Text lengths differ within every pair.
COMPLETIONS = {
    "the cat sat": (" happy bird", " sad", True, True),
    "a dog ran": (" blue sun", " the big green tree on a log", True, False),
    "big red sun": (" a cat sat on the mat", " sad", True, True),
    "the moon sat": (" sad", " blue sun", True, True),
}


def text_length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def soft_length_judge(prompts, completions_a, completions_b):
    """q = σ((|a| − |b|)/8): swapping a and b gives 1 − q."""
    return [1 / (1 + math.exp(-(len(a) - len(b)) / 8)) for a, b in zip(completions_a, completions_b, strict=True)]


def fixed_pairs(tokenizer, prompts, device, swap=False):
    """The tensors ``_generate`` returns, for the fixed completions of ``prompts``: rows a_0..a_B−1, b_0..b_B−1."""
    enc = tokenizer(text=prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    rows = []
    for side in (1, 0) if swap else (0, 1):
        for p in prompts:
            ids = tokenizer(COMPLETIONS[p][side], add_special_tokens=False)["input_ids"]
            rows.append(ids + [tokenizer.eos_token_id] if COMPLETIONS[p][2 + side] else ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    four = (enc["input_ids"].repeat(2, 1), enc["attention_mask"].repeat(2, 1), ids, mask)
    return (*(t.to(device) for t in four), None)[: _compat.online_generate_outputs()]  # as many as TRL's _generate


class FixedPairsMixin:
    """Replaces sampling by the fixed completions (both trainers call ``_generate``) and records step losses."""

    swap = False

    def _generate(self, model, prompts, images=None):
        return fixed_pairs(self.processing_class, list(prompts), self.accelerator.device, self.swap)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.step_losses = getattr(self, "step_losses", []) + [loss.item()]
        return loss


class FixedOnlineIPO(FixedPairsMixin, OnlineIPOTrainer):
    pass


class FixedOnlineDPO(FixedPairsMixin, OnlineDPOTrainer):
    pass


class GradCapture(TrainerCallback):
    """Accumulated gradients just before each optimizer step."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def config_kwargs(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path),
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_steps=1,
        logging_steps=1,
        max_grad_norm=0.0,  # compare raw gradients
        beta=0.1,
        max_new_tokens=4,
    )
    base.update(overrides)
    return base


def prompt_dataset():
    return Dataset.from_list([{"prompt": p} for p in PROMPTS])


def build(trainer_cls, config_cls, load_model, tokenizer, tmp_path, trainer_kwargs=None, **overrides):
    capture = GradCapture()
    trainer = trainer_cls(
        model=load_model(),
        args=config_cls(**config_kwargs(tmp_path, **overrides)),
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
        callbacks=[capture],
        **(trainer_kwargs or {"reward_funcs": text_length_reward}),
    )
    return trainer, capture


def assert_grads_close(got, expected, rtol=1e-5, atol=1e-5):
    """Equal up to float32 summation order (the largest gradient entries are O(10))."""
    assert got.keys() == expected.keys()
    assert got
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=atol, msg=name)


@pytest.mark.compat
def test_equals_trl_online_dpo_ipo_with_hard_labels_and_summed_logps(load_model, tokenizer, tmp_path):
    ours, our_grads = build(
        FixedOnlineIPO,
        OnlineIPOConfig,
        load_model,
        tokenizer,
        tmp_path / "ours",
        logp_reduction="sum",
        reward_to_preference="hard",
    )
    theirs, their_grads = build(
        FixedOnlineDPO, OnlineDPOConfig, load_model, tokenizer, tmp_path / "trl", loss_type="ipo"
    )
    ours.train()
    theirs.train()
    # Both label directions occur (a wins on two prompts, b on two), and no pair is tied.
    log = ours.state.log_history[0]
    assert log["online/preference_mean"] == 0.5
    assert log["online/tie_fraction"] == 0.0
    assert ours.step_losses[0] > 1.0
    assert ours.step_losses[0] == pytest.approx(theirs.step_losses[0], rel=1e-6)
    assert_grads_close(our_grads.grads[0], their_grads.grads[0])


def test_ties_do_not_move_the_policy(load_model, tokenizer, tmp_path):
    trainer, capture = build(
        OnlineIPOTrainer,
        OnlineIPOConfig,
        load_model,
        tokenizer,
        tmp_path,
        trainer_kwargs={"judge": lambda prompts, a, b: [0.5] * len(prompts)},
        max_steps=3,
        weight_decay=0.0,
        mixture_coef=0.5,  # IPO-MD sampling: ties make sampling irrelevant
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    # At initialisation: zero loss and exactly zero gradient.
    loss = trainer.compute_loss(trainer.model, {"prompt": PROMPTS})
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.count_nonzero(p.grad) == 0 for p in trainer.model.parameters() if p.grad is not None)
    # Ordered targets (symmetric=False) would push the first completion up on a tie: not zero.
    trainer.args.symmetric = False
    assert trainer.compute_loss(trainer.model, {"prompt": PROMPTS}).item() > 1.0
    trainer.args.symmetric = True
    trainer.model.zero_grad(set_to_none=True)

    trainer.train()
    assert len(capture.grads) == 3
    assert trainer.state.log_history[0]["online/tie_fraction"] == 1.0
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param.detach(), before[name]), name


def test_gradient_accumulation_matches_one_large_batch(load_model, tokenizer, tmp_path):
    judge = {"judge": soft_length_judge}
    large, large_grads = build(FixedOnlineIPO, OnlineIPOConfig, load_model, tokenizer, tmp_path / "a", judge)
    accumulated, accumulated_grads = build(
        FixedOnlineIPO,
        OnlineIPOConfig,
        load_model,
        tokenizer,
        tmp_path / "b",
        judge,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    large.train()
    accumulated.train()
    assert len(accumulated.step_losses) == 2
    # Trainer reports each micro-batch loss already divided by the accumulation steps.
    assert sum(accumulated.step_losses) == pytest.approx(large.step_losses[0], rel=1e-5)
    assert_grads_close(accumulated_grads.grads[0], large_grads.grads[0])


def test_trl_online_dpo_accumulated_gradient_is_steps_times_too_large(load_model, tokenizer, tmp_path):
    """The flaw the trainer above avoids: TRL 1.16 back-propagates each micro-batch mean undivided."""
    large, large_grads = build(FixedOnlineDPO, OnlineDPOConfig, load_model, tokenizer, tmp_path / "a", loss_type="ipo")
    accumulated, accumulated_grads = build(
        FixedOnlineDPO,
        OnlineDPOConfig,
        load_model,
        tokenizer,
        tmp_path / "b",
        loss_type="ipo",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    large.train()
    accumulated.train()
    doubled = {name: 2 * grad for name, grad in large_grads.grads[0].items()}
    assert_grads_close(accumulated_grads.grads[0], doubled)


def test_swapping_completions_and_q_leaves_the_loss_unchanged(load_model, tokenizer, tmp_path):
    trainer, _ = build(FixedOnlineIPO, OnlineIPOConfig, load_model, tokenizer, tmp_path, {"judge": soft_length_judge})
    # Move the policy off the reference so that the margins are not all zero.
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def loss(swap, **args):
        trainer.swap = swap
        for key, value in args.items():
            setattr(trainer.args, key, value)
        with torch.no_grad():
            return trainer.compute_loss(trainer.model, {"prompt": PROMPTS}).item()

    for loss_form in ("paper", "scaled"):
        straight = loss(False, symmetric=True, loss_form=loss_form)
        assert straight > 0  # a real loss, so that the equality below says something
        assert loss(True) == pytest.approx(straight, rel=1e-6)
    # Without the symmetric augmentation the order matters: the test can tell.
    assert loss(True, symmetric=False, loss_form="paper") != pytest.approx(loss(False), rel=1e-3)


@torch.no_grad()
def completion_logratio_sums(policy, reference, tokenizer, prompt, completion, eos):
    """Σ_t log π_θ(y_t) − log π_ref(y_t) and the token count, from one unpadded sequence per model."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    sequence = torch.tensor([prompt_ids + ids])
    total = 0.0
    for sign, model in ((1, policy), (-1, reference)):
        logps = torch.log_softmax(model(input_ids=sequence).logits[0].double(), dim=-1)
        positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(ids))
        total += sign * logps[positions, torch.tensor(ids)].sum().item()
    return total, len(ids)


def test_logged_metrics_against_hand_computation(load_model, tokenizer, tmp_path):
    from trl_ipo.lab.tiny import build_model

    q_of = dict(zip(PROMPTS, [1.0, 0.5, 0.25, 0.5], strict=True))
    reference = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=1)
    trainer, _ = build(
        FixedOnlineIPO,
        OnlineIPOConfig,
        load_model,
        tokenizer,
        tmp_path,
        {"judge": lambda prompts, a, b: [q_of[p] for p in prompts], "ref_model": reference},
    )
    beta = 0.1
    policy = load_model().eval()  # the policy before the step (logged values are computed before it)
    kls, deltas = [], {}
    for p in PROMPTS:
        a, b, eos_a, eos_b = COMPLETIONS[p]
        (sum_a, n_a), (sum_b, n_b) = (
            completion_logratio_sums(policy, reference, tokenizer, p, a, eos_a),
            completion_logratio_sums(policy, reference, tokenizer, p, b, eos_b),
        )
        kls += [sum_a, sum_b]
        deltas[p] = sum_a / n_a - sum_b / n_b  # per-token mean (the default logp_reduction)
    trainer.train()
    log = trainer.state.log_history[0]

    for key in (
        "ipo/delta",
        "ipo/target",
        "ipo/residual",
        "ipo/sq_error",
        "online/judge_agreement",
        "online/preference_mean",
        "online/tie_fraction",
        "online/kl",
        "loss",
    ):
        assert key in log, key
    assert log["online/preference_mean"] == pytest.approx(0.5625)
    assert log["online/tie_fraction"] == 0.5
    # KL estimate over completion tokens only; the completions have different lengths, so the batch is padded.
    assert log["online/kl"] == pytest.approx(sum(kls) / len(kls), abs=1e-5)
    assert abs(sum(kls)) > 1e-3
    targets = {p: (q - 0.5) / beta for p, q in q_of.items()}
    assert log["ipo/delta"] == pytest.approx(sum(deltas.values()) / 4, abs=1e-5)
    assert log["ipo/target"] == pytest.approx(sum(targets.values()) / 4, abs=1e-6)
    sq_error = sum((deltas[p] - targets[p]) ** 2 for p in PROMPTS) / 4
    assert log["ipo/sq_error"] == pytest.approx(sq_error, rel=1e-5)
    assert trainer.step_losses[0] == pytest.approx(sq_error, rel=1e-5)
    decided = [p for p in PROMPTS if q_of[p] != 0.5]
    agreement = sum((deltas[p] > 0) == (q_of[p] > 0.5) for p in decided) / len(decided)
    assert log["online/judge_agreement"] == pytest.approx(agreement)


def test_trainer_rejects_bad_setups(load_model, tokenizer, tmp_path):
    args = OnlineIPOConfig(**config_kwargs(tmp_path))
    model = load_model()
    with pytest.raises(ValueError, match="exactly one of `judge` or `reward_funcs`"):
        OnlineIPOTrainer(model=model, args=args, train_dataset=prompt_dataset(), processing_class=tokenizer)
    with pytest.raises(ValueError, match="needs a `prompt` column; it has \\['text'\\]"):
        OnlineIPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{"text": "x"}]),
            processing_class=tokenizer,
            judge=soft_length_judge,
        )
    with pytest.raises(ValueError, match="row 1: empty prompt"):
        OnlineIPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{"prompt": "a"}, {"prompt": ""}]),
            processing_class=tokenizer,
            judge=soft_length_judge,
        )


def test_peft_reference_is_the_policy_with_its_adapter_disabled(load_model, tokenizer, tmp_path):
    from peft import LoraConfig

    from trl_ipo.online.sampling import completion_logps

    trainer = OnlineIPOTrainer(
        model=load_model(),
        args=OnlineIPOConfig(**config_kwargs(tmp_path, mixture_coef=0.5)),
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
        judge=soft_length_judge,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert trainer.ref_model is None
    with torch.no_grad():  # move the adapter off zero so that policy and reference differ
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    base = load_model().eval()  # the initial weights: the reference
    prompt_ids, prompt_mask, completion_ids, completion_mask, _ = fixed_pairs(tokenizer, PROMPTS, "cpu")
    scored = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    mask = completion_mask.bool()
    with torch.no_grad():
        expected = completion_logps(base, *scored)[mask]
        torch.testing.assert_close(trainer._reference_logps(trainer.model, *scored)[mask], expected, atol=1e-5, rtol=0)
        assert not torch.allclose(completion_logps(trainer.model, *scored)[mask], expected, atol=1e-3)
        with trainer._reference_for_sampling(trainer.model) as reference:  # what the IPO-MD sampler calls
            got = reference(input_ids=prompt_ids, attention_mask=prompt_mask).logits
        expected_logits = base(input_ids=prompt_ids, attention_mask=prompt_mask).logits
        torch.testing.assert_close(got, expected_logits, atol=1e-5, rtol=0)

    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()  # one IPO-MD step, sampling from the mixture of adapter-enabled and adapter-disabled model
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, lora[n]) for n, p in trainer.model.named_parameters() if n in lora)


def test_conversational_prompts_reach_the_judge_as_messages(load_model, tokenizer, tmp_path):
    seen = []

    def judge(prompts, completions_a, completions_b):
        seen.append((prompts, completions_a, completions_b))
        texts_a, texts_b = [c[0]["content"] for c in completions_a], [c[0]["content"] for c in completions_b]
        return soft_length_judge(prompts, texts_a, texts_b)

    rows = [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS]
    trainer = OnlineIPOTrainer(
        model=load_model(),
        args=OnlineIPOConfig(**config_kwargs(tmp_path, mixture_coef=0.5)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        judge=judge,
    )
    trainer.train()
    prompts, completions_a, completions_b = seen[0]
    assert sorted(p[0]["content"] for p in prompts) == sorted(PROMPTS)
    for completion in completions_a + completions_b:
        assert [m["role"] for m in completion] == ["assistant"]
        assert isinstance(completion[0]["content"], str)
