"""IPOTrainer against independent computations: stock TRL, hand-computed log-probs, the symmetric identity."""

import pytest
import torch
from conftest import make_pairs
from trainer_utils import (
    assert_grads_close,
    build,
    full_batch,
    hand_logps,
    loss_and_grads,
    params,
    symmetric_and_doubled,
)
from trl import DPOConfig, DPOTrainer

from trl_ipo import IPOConfig, IPOTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")  # Trainer reseeds the global generators

ROWS = make_pairs(8, seed=1, preference=True)


@pytest.mark.compat
def test_defaults_match_trl_ipo_loss_grads_and_steps(load_model, tokenizer, tmp_path):
    ours = build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "a")
    stock = build(DPOTrainer, DPOConfig, load_model, tokenizer, ROWS, tmp_path / "b", loss_type=["ipo"])
    # Move the policy away from the reference first, so Δ ≠ 0 and the comparison is not trivial.
    for trainer in (ours, stock):
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(0.05 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
    loss_a, grads_a = loss_and_grads(ours)
    loss_b, grads_b = loss_and_grads(stock)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    assert_grads_close(grads_a, grads_b)
    assert abs(ours._metrics["train"]["ipo/delta"][-1]) > 1e-3  # the policy really moved

    ours.train()
    stock.train()
    for x, y in zip(ours.state.log_history[:-1], stock.state.log_history[:-1], strict=True):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/chosen", "entropy", "mean_token_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), key
    pa, pb = params(ours.model), params(stock.model)
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-5, atol=1e-6)


def _perturbed(trainer, scale=0.05):
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(scale * torch.cos(torch.arange(p.numel(), dtype=p.dtype) * 0.37).view_as(p))
    return trainer


@pytest.mark.compat
def test_metrics_and_sum_reduction_against_hand_logps(load_model, tokenizer, tmp_path):
    rows = ROWS[:4]
    beta = 0.5
    for reduction in ("sum", "mean"):
        trainer = _perturbed(
            build(
                IPOTrainer,
                IPOConfig,
                load_model,
                tokenizer,
                rows,
                tmp_path / reduction,
                logp_reduction=reduction,
                beta=beta,
            )
        )
        loss, _ = loss_and_grads(trainer)
        ref = load_model()  # the untouched reference
        eos = tokenizer.eos_token
        deltas = []
        for row in rows:
            rho = []
            for key in ("chosen", "rejected"):
                lp, n = hand_logps(trainer.model, tokenizer, row["prompt"], row[key] + eos)
                lr, _ = hand_logps(ref, tokenizer, row["prompt"], row[key] + eos)
                rho.append((lp - lr) / (n if reduction == "mean" else 1))
            deltas.append(rho[0] - rho[1])
        deltas = torch.tensor(deltas, dtype=torch.float64)
        expected = ((deltas - 0.5 / beta) ** 2).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
        metrics = trainer._metrics["train"]
        assert metrics["ipo/delta"][-1] == pytest.approx(deltas.mean().item(), rel=1e-4, abs=1e-6)
        assert metrics["ipo/target"][-1] == pytest.approx(0.5 / beta)
        assert metrics["ipo/residual"][-1] == pytest.approx((deltas - 0.5 / beta).mean().item(), rel=1e-4)
        assert metrics["ipo/sq_error"][-1] == pytest.approx(expected.item(), rel=1e-4)


def test_scaled_form_is_beta_squared_paper(load_model, tokenizer, tmp_path):
    beta = 0.3
    paper = _perturbed(
        build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "p", beta=beta, preference_column="q")
    )
    scaled = _perturbed(
        build(
            IPOTrainer,
            IPOConfig,
            load_model,
            tokenizer,
            ROWS,
            tmp_path / "s",
            beta=beta,
            preference_column="q",
            loss_form="scaled",
        )
    )
    loss_p, grads_p = loss_and_grads(paper)
    loss_s, grads_s = loss_and_grads(scaled)
    torch.testing.assert_close(loss_s, beta**2 * loss_p, rtol=1e-6, atol=0)
    assert_grads_close(grads_s, {k: beta**2 * v for k, v in grads_p.items()})


def test_symmetric_equals_explicitly_doubled_dataset(load_model, tokenizer, tmp_path):
    sym, doubled = (_perturbed(t) for t in symmetric_and_doubled(load_model, tokenizer, ROWS, tmp_path))
    loss_sym, grads_sym = loss_and_grads(sym)
    loss_dbl, grads_dbl = loss_and_grads(doubled)
    beta = sym.args.beta
    # mean over 2N augmented pairs = mean over N symmetric pairs + 1/(4β²)
    torch.testing.assert_close(loss_dbl, loss_sym + 1 / (4 * beta**2), rtol=1e-5, atol=0)
    assert_grads_close(grads_sym, grads_dbl, rtol=1e-4, atol=1e-6)


def test_q_one_reproduces_hard_labels(load_model, tokenizer, tmp_path):
    ones = [{**r, "q": 1.0} for r in ROWS]
    hard = _perturbed(build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "h"))
    soft = _perturbed(build(IPOTrainer, IPOConfig, load_model, tokenizer, ones, tmp_path / "s", preference_column="q"))
    loss_h, grads_h = loss_and_grads(hard)
    loss_s, grads_s = loss_and_grads(soft)
    torch.testing.assert_close(loss_h, loss_s, rtol=0, atol=0)
    assert_grads_close(grads_h, grads_s, rtol=0, atol=0)


def test_ties_give_zero_loss_and_gradient_at_init(load_model, tokenizer, tmp_path):
    ties = [{**r, "q": 0.5} for r in ROWS]
    trainer = build(IPOTrainer, IPOConfig, load_model, tokenizer, ties, tmp_path, preference_column="q")
    loss, grads = loss_and_grads(trainer)
    assert loss.item() == 0.0
    assert all(g.abs().max().item() == 0.0 for g in grads.values())
    # the batch really carried q = 0.5 to the loss
    assert full_batch(trainer)["preference"].tolist() == [0.5] * len(ROWS)
