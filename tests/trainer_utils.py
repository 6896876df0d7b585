"""Helpers shared by the trainer tests: build trainers on the tiny model and read exact losses/gradients."""

import torch
from conftest import cpu_args
from datasets import Dataset


def build(trainer_cls, config_cls, load_model, tokenizer, rows, tmp_path, **overrides):
    return trainer_cls(
        model=load_model(),
        args=config_cls(**cpu_args(tmp_path, **overrides)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def symmetric_and_doubled(load_model, tokenizer, rows, tmp_path, **overrides):
    """Two IPOTrainers on soft labels (column ``q``): ``symmetric=True`` on ``rows``, and ``symmetric=False`` on
    ``rows`` plus every pair swapped with 1 − q, the explicit augmentation the first computes analytically."""
    from trl_ipo import IPOConfig, IPOTrainer

    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"], "q": 1 - r["q"]} for r in rows]
    common = dict(preference_column="q", **overrides)
    sym = build(IPOTrainer, IPOConfig, load_model, tokenizer, rows, tmp_path / "a", **common)
    doubled = build(
        IPOTrainer, IPOConfig, load_model, tokenizer, rows + swapped, tmp_path / "b", symmetric=False, **common
    )
    return sym, doubled


def full_batch(trainer):
    """All training rows as one collated batch, in dataset order."""
    dataset = trainer._remove_unused_columns(trainer.train_dataset, "training")
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    return trainer._prepare_inputs(batch)


def loss_and_grads(trainer, batch=None):
    """Loss of the whole training set as one batch, and the gradient of every trainable parameter."""
    model = trainer.model
    model.train()
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, full_batch(trainer) if batch is None else batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def assert_grads_close(a, b, rtol=1e-5, atol=1e-7):
    assert a.keys() == b.keys()
    assert len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def hand_logps(model, tokenizer, prompt, completion):
    """Σ log p(completion tokens | prompt), from a plain forward with log_softmax (independent of TRL)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + completion)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    logprobs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    completion_logps = logprobs[len(prompt_ids) - 1 :]
    return completion_logps.sum().item(), len(completion_logps)


def tiny_moe_loader(config_cls, model_cls, tokenizer, **experts):
    """A loader of a seeded 2-layer MoE model with a router loss (coefficient 0.1); ``experts`` names the family's
    expert fields (``num_experts`` or ``num_local_experts``, sizes)."""

    def load():
        torch.manual_seed(0)
        config = config_cls(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_experts_per_tok=2,
            output_router_logits=True,
            router_aux_loss_coef=0.1,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **experts,
        )
        return model_cls(config)

    return load
