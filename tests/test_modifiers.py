"""TRL's loss modifiers (use_weighting, ld_alpha, f_divergence_type) in IPOTrainer.

With defaults and hard labels, IPOTrainer must give stock ``DPOTrainer(loss_type=["ipo"])``'s loss and gradients
with the same modifier on. With soft labels, the analytic symmetric augmentation must still equal the explicitly
doubled dataset; the modifier functions are checked against hand formulas.
"""

import math

import pytest
import torch
from conftest import cpu_args, make_pairs
from trainer_utils import assert_grads_close, build, full_batch, loss_and_grads, symmetric_and_doubled
from trl import DPOConfig, DPOTrainer

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.losses import f_divergence_scores, sequence_logps, wpo_pair_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = make_pairs(8, seed=11, preference=True)

MODIFIERS = {
    "wpo": dict(use_weighting=True),
    "ld": dict(ld_alpha=0.3),
    "forward_kl": dict(f_divergence_type="forward_kl"),
    "js": dict(f_divergence_type="js_divergence"),
    "alpha": dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3),
    "all": dict(use_weighting=True, ld_alpha=0.6, f_divergence_type="forward_kl"),
}


def _moved(trainer, scale=0.05):
    """Move the policy away from the reference (Δ ≠ 0, weights and f-scores away from their value at 0)."""
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(scale * torch.sin(torch.arange(p.numel(), dtype=p.dtype) * 0.71).view_as(p))
    return trainer


@pytest.mark.parametrize("name", list(MODIFIERS))
def test_modifier_matches_stock_trl_ipo(name, load_model, tokenizer, tmp_path):
    modifier = MODIFIERS[name]
    ours = _moved(build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "a", **modifier))
    stock = _moved(
        build(DPOTrainer, DPOConfig, load_model, tokenizer, ROWS, tmp_path / "b", loss_type=["ipo"], **modifier)
    )
    plain = _moved(build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "c"))
    loss_a, grads_a = loss_and_grads(ours)
    loss_b, grads_b = loss_and_grads(stock)
    loss_c, _ = loss_and_grads(plain)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    assert_grads_close(grads_a, grads_b)
    assert abs(loss_a.item() - loss_c.item()) > 1e-3 * loss_c.item(), "the modifier changed nothing"
    for key in ("logps/chosen", "rewards/margins"):  # TRL's metrics follow the (LD) log-probs as in stock TRL
        assert ours._metrics["train"][key][-1] == pytest.approx(stock._metrics["train"][key][-1], rel=1e-5)
    if modifier.get("use_weighting"):
        assert 0 < ours._metrics["train"]["ipo/wpo_weight"][-1] < 1


def test_modifiers_with_precomputed_reference_match_stock_trl(load_model, tokenizer, tmp_path):
    modifier = dict(ld_alpha=0.5, f_divergence_type="js_divergence", precompute_ref_log_probs=True)
    ours = _moved(build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "a", **modifier))
    stock = _moved(
        build(DPOTrainer, DPOConfig, load_model, tokenizer, ROWS, tmp_path / "b", loss_type=["ipo"], **modifier)
    )
    batch = full_batch(ours)
    assert "ref_chosen_logps" in batch
    loss_a, grads_a = loss_and_grads(ours, batch)
    loss_b, grads_b = loss_and_grads(stock)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=0)
    assert_grads_close(grads_a, grads_b)


@pytest.mark.parametrize("name", ["wpo", "ld", "alpha", "all"])
def test_symmetric_with_modifier_equals_doubled_dataset(name, load_model, tokenizer, tmp_path):
    """Each modifier is symmetric in the pair (shared length, w_c·w_r, per-completion scores), so the analytic
    augmentation (target q − ½) keeps the gradient of the explicitly doubled dataset with targets q and 1 − q."""
    modifier = MODIFIERS[name]
    sym, doubled = (_moved(t) for t in symmetric_and_doubled(load_model, tokenizer, ROWS, tmp_path, **modifier))
    _, grads_sym = loss_and_grads(sym)
    _, grads_dbl = loss_and_grads(doubled)
    assert_grads_close(grads_sym, grads_dbl, rtol=1e-4, atol=1e-6)


def test_scaled_form_with_modifiers_is_beta_squared_paper(load_model, tokenizer, tmp_path):
    beta, modifier = 0.3, MODIFIERS["all"]
    kw = dict(beta=beta, preference_column="q", logp_reduction="sum", **modifier)
    paper = _moved(build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "p", **kw))
    scaled = _moved(build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path / "s", loss_form="scaled", **kw))
    loss_p, grads_p = loss_and_grads(paper)
    loss_s, grads_s = loss_and_grads(scaled)
    torch.testing.assert_close(loss_s, beta**2 * loss_p, rtol=1e-6, atol=0)
    assert_grads_close(grads_s, {k: beta**2 * v for k, v in grads_p.items()})


def test_modifier_functions_against_hand_formulas():
    # Two pairs: chosen lengths 3 and 1, rejected lengths 2 and 4 (one prompt position in front of each).
    lengths = [3, 1, 2, 4]
    logps = torch.zeros(4, 6, dtype=torch.float64)
    mask = torch.zeros(4, 6, dtype=torch.float64)
    values = torch.linspace(-2.0, -0.1, 24, dtype=torch.float64).view(4, 6)
    for row, n in enumerate(lengths):
        mask[row, 1 : 1 + n] = 1
        logps[row, 1 : 1 + n] = values[row, 1 : 1 + n]
    alpha = 0.25
    got = sequence_logps(logps, mask, alpha)
    shared = [2, 1, 2, 1]  # min over each pair, repeated for [chosen; rejected]
    for row, n in enumerate(lengths):
        tokens = values[row, 1 : 1 + n].tolist()
        expected = sum(tokens[: shared[row]]) + alpha * sum(tokens[shared[row] :])
        assert got[row].item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(sequence_logps(logps, mask, None), logps.sum(dim=1))

    u = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0], dtype=torch.float64)
    for x, y in zip(f_divergence_scores(u, "forward_kl").tolist(), u.tolist(), strict=True):
        assert x == pytest.approx(1 - math.exp(-y))
    for x, y in zip(f_divergence_scores(u, "js_divergence").tolist(), u.tolist(), strict=True):
        t = math.exp(y)
        assert x == pytest.approx(math.log(2 * t / (t + 1)))
    for a in (0.3, 2.0):
        for x, y in zip(f_divergence_scores(u, "alpha_divergence", a).tolist(), u.tolist(), strict=True):
            t = math.exp(y)
            assert x == pytest.approx((t ** (a - 1) - 1) / (a - 1))
    torch.testing.assert_close(f_divergence_scores(u, "alpha_divergence", 1.0), u)
    with pytest.raises(ValueError, match="f_divergence_type"):
        f_divergence_scores(u, "hellinger")

    log_sum_sq = torch.full_like(logps, -0.5) * mask
    weights = wpo_pair_weights(logps, log_sum_sq, mask)
    per_seq = [math.exp(sum(v + 0.5 for v in values[r, 1 : 1 + n].tolist()) / n) for r, n in enumerate(lengths)]
    assert weights.tolist() == pytest.approx([per_seq[0] * per_seq[2], per_seq[1] * per_seq[3]], rel=1e-12)


def test_unknown_f_divergence_is_refused_before_training(load_model, tokenizer, tmp_path):
    with pytest.raises(ValueError, match=r"f_divergence_type must be one of \['reverse_kl', .*got 'hellinger'"):
        build(IPOTrainer, IPOConfig, load_model, tokenizer, ROWS, tmp_path, f_divergence_type="hellinger")


def test_model_card_states_the_modifiers(tmp_path):
    from trl_ipo.model_card import ipo_settings_section

    plain = ipo_settings_section(IPOConfig(**cpu_args(tmp_path)))
    assert "ld_alpha" not in plain
    assert "Loss modifiers" not in plain
    card = ipo_settings_section(IPOConfig(**cpu_args(tmp_path, **MODIFIERS["all"])))
    assert "| `ld_alpha` | `0.6` |" in card
    assert "| `f_divergence_type` | `'forward_kl'` |" in card
    assert "| `use_weighting` | `True` |" in card
    assert "Loss modifiers from TRL" in card
