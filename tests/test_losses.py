"""trl_ipo.losses against hand-written formulas and the algebra of Azar et al. 2023 eq. 16–17 (docs/theory.md)."""

import pytest
import torch

from trl_ipo.losses import ipo_loss, ipo_regression, ipo_target, reduce_logps


@pytest.fixture
def pairs():
    g = torch.Generator().manual_seed(0)
    chosen = torch.randn(7, generator=g, dtype=torch.float64)
    rejected = torch.randn(7, generator=g, dtype=torch.float64)
    q = torch.rand(7, generator=g, dtype=torch.float64)
    return chosen, rejected, q


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 3.0])
def test_hard_label_paper_form_is_azar_eq17(pairs, beta):
    chosen, rejected, _ = pairs
    expected = [((c - r) - 1 / (2 * beta)) ** 2 for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)]
    assert ipo_loss(chosen, rejected, beta).tolist() == pytest.approx(expected, rel=1e-12)


def test_scaled_form_is_beta_squared_times_paper(pairs):
    chosen, rejected, q = pairs
    for beta in (0.05, 0.7, 2.0):
        for sym in (True, False):
            paper = ipo_loss(chosen, rejected, beta, q, symmetric=sym, loss_form="paper")
            scaled = ipo_loss(chosen, rejected, beta, q, symmetric=sym, loss_form="scaled")
            torch.testing.assert_close(scaled, beta**2 * paper, rtol=1e-12, atol=0)
            # scaled regresses the reward margin h = beta * delta toward t
            h = beta * (chosen - rejected)
            t = q - 0.5 if sym else q
            torch.testing.assert_close(scaled, (h - t) ** 2, rtol=1e-12, atol=0)


def test_soft_targets(pairs):
    chosen, rejected, q = pairs
    beta = 0.3
    delta = chosen - rejected
    torch.testing.assert_close(ipo_loss(chosen, rejected, beta, q), (delta - (q - 0.5) / beta) ** 2)
    torch.testing.assert_close(ipo_loss(chosen, rejected, beta, q, symmetric=False), (delta - q / beta) ** 2)
    # q = 1 is the hard label; q = 1/2 a tie with target 0
    ones = torch.ones_like(q)
    torch.testing.assert_close(ipo_loss(chosen, rejected, beta, ones), ipo_loss(chosen, rejected, beta))
    torch.testing.assert_close(ipo_loss(chosen, rejected, beta, 0.5 * ones), delta**2)


def test_symmetric_augmentation_identity(pairs):
    """(Δ − q/β)² + (−Δ − (1−q)/β)² = 2(Δ − (q−½)/β)² + 1/(2β²): same gradient, constant offset."""
    chosen, rejected, q = pairs
    beta = 0.2
    forward = ipo_loss(chosen, rejected, beta, q, symmetric=False)
    swapped = ipo_loss(rejected, chosen, beta, 1 - q, symmetric=False)
    symmetric = ipo_loss(chosen, rejected, beta, q, symmetric=True)
    torch.testing.assert_close(forward + swapped, 2 * symmetric + 1 / (2 * beta**2))


def test_symmetric_gradient_equals_doubled_dataset(pairs):
    chosen, rejected, q = pairs
    beta = 0.4
    c1, r1 = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    doubled = torch.cat([ipo_loss(c1, r1, beta, q, symmetric=False), ipo_loss(r1, c1, beta, 1 - q, symmetric=False)])
    doubled.mean().backward()
    c2, r2 = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    ipo_loss(c2, r2, beta, q, symmetric=True).mean().backward()
    torch.testing.assert_close(c1.grad, c2.grad)
    torch.testing.assert_close(r1.grad, r2.grad)


def test_regression_units(pairs):
    chosen, rejected, q = pairs
    margin, target = ipo_regression(chosen, rejected, 0.5, q, loss_form="paper")
    torch.testing.assert_close(margin, chosen - rejected)
    torch.testing.assert_close(target, (q - 0.5) / 0.5)
    margin, target = ipo_regression(chosen, rejected, 0.5, q, loss_form="scaled")
    torch.testing.assert_close(margin, 0.5 * (chosen - rejected))
    torch.testing.assert_close(target, q - 0.5)


def test_target_values():
    like = torch.zeros(3)
    assert ipo_target(None, True, like).tolist() == [0.5] * 3
    assert ipo_target(None, False, like).tolist() == [1.0] * 3
    assert ipo_target(torch.tensor([0.5, 0.0, 1.0]), True, like).tolist() == [0.0, -0.5, 0.5]


def test_reduce_logps():
    sums = torch.tensor([-6.0, -3.0], dtype=torch.float64)
    n = torch.tensor([3, 0])
    assert reduce_logps(sums, n, "sum").tolist() == [-6.0, -3.0]
    assert reduce_logps(sums, n, "mean").tolist() == [-2.0, -3.0]  # empty completion: divide by 1
    with pytest.raises(ValueError, match="logp_reduction"):
        reduce_logps(sums, n, "max")


def test_bad_arguments(pairs):
    chosen, rejected, _ = pairs
    with pytest.raises(ValueError, match="beta"):
        ipo_loss(chosen, rejected, 0.0)
    with pytest.raises(ValueError, match="loss_form"):
        ipo_loss(chosen, rejected, 0.1, loss_form="squared")
