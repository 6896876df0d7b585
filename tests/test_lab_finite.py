"""Exact finite-action IPO (trl_ipo.lab.theory.finite) against hand-written formulas and independent solvers."""

import math

import numpy as np
import pytest
import torch

from trl_ipo.lab.theory.finite import (
    check_preference_matrix,
    comparison_laplacian,
    connected_components,
    ipo_closed_form,
    ipo_logratios,
    population_loss_pairwise,
    population_loss_score_difference,
    population_optimum,
    sampled_ipo_loss,
)

F64 = torch.float64
D1 = [(0, 1), (1, 2), (0, 2)]
TAUS = (0.1, 0.5, 1.0, 2.0, 10.0)


@pytest.mark.parametrize("tau", TAUS)
def test_d1_closed_form_is_one_third_tau(tau):
    """For D1 the sampled IPO loss is minimised by u* = (1/(3τ), 0, −1/(3τ)).

    By hand: with u_b = 0 and u_a = −u_c = x the loss is 2(x − 1/(2τ))² + (2x − 1/(2τ))², minimal at x = 1/(3τ).
    """
    solution = ipo_closed_form(D1, [1 / 3] * 3, tau)
    expected = torch.tensor([1 / (3 * tau), 0.0, -1 / (3 * tau)], dtype=F64)
    torch.testing.assert_close(solution.logratio, expected, rtol=0, atol=1e-12)
    weights = torch.exp(expected)
    torch.testing.assert_close(solution.policy, weights / weights.sum(), rtol=0, atol=1e-12)
    assert solution.num_components == 1


def test_d1_without_symmetric_augmentation_doubles_the_target():
    """symmetric=False regresses onto q/β = 1/β for hard labels, so u* = (2/(3β), 0, −2/(3β))."""
    u = ipo_logratios(D1, 3, beta=0.5, symmetric=False)
    torch.testing.assert_close(u, torch.tensor([4 / 3, 0.0, -4 / 3], dtype=F64), rtol=0, atol=1e-12)


def _random_problem(seed, num_actions=6, num_pairs=11):
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < num_pairs:
        w, l = rng.integers(0, num_actions, size=2)
        if w != l:
            pairs.append((int(w), int(l)))
    q = rng.uniform(0, 1, size=num_pairs)
    weights = rng.integers(1, 4, size=num_pairs).astype(float)
    reference = rng.dirichlet(np.ones(num_actions))
    return pairs, q, weights, reference


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [True, False])
def test_closed_form_equals_minimum_norm_least_squares(seed, symmetric):
    """L⁺b equals numpy's SVD least-squares solution of the weighted incidence system √m·(B u − s) = 0,
    which is the minimum-norm minimiser, for a random multigraph with soft labels and weights."""
    beta = 0.7
    pairs, q, weights, reference = _random_problem(seed)
    k = len(reference)
    incidence = np.zeros((len(pairs), k))
    for p, (w, l) in enumerate(pairs):
        incidence[p, w], incidence[p, l] = 1.0, -1.0
    target = ((q - 0.5) if symmetric else q) / beta
    sqrt_m = np.sqrt(weights)[:, None]
    expected, *_ = np.linalg.lstsq(sqrt_m * incidence, sqrt_m[:, 0] * target, rcond=None)

    solution = ipo_closed_form(pairs, reference, beta, preference=q, symmetric=symmetric, weights=weights)
    np.testing.assert_allclose(solution.logratio.numpy(), expected, atol=1e-10)
    policy = reference * np.exp(expected)
    np.testing.assert_allclose(solution.policy.numpy(), policy / policy.sum(), atol=1e-10)
    # It really is a minimiser of the sampled loss: no random perturbation does better.
    base = sampled_ipo_loss(solution.logratio, pairs, beta, q, symmetric, weights)
    noise = torch.randn(64, k, dtype=F64, generator=torch.Generator().manual_seed(seed)) * 1e-2
    assert (sampled_ipo_loss(solution.logratio + noise, pairs, beta, q, symmetric, weights) >= base - 1e-12).all()


def test_multiplicity_equals_weight_and_laplacian_by_hand():
    pairs = [(0, 1), (0, 1), (1, 2)]
    q = [0.9, 0.9, 0.7]
    repeated = ipo_logratios(pairs, 3, 1.0, q)
    weighted = ipo_logratios([(0, 1), (1, 2)], 3, 1.0, [0.9, 0.7], weights=[2.0, 1.0])
    torch.testing.assert_close(repeated, weighted, rtol=0, atol=1e-12)
    expected_l = torch.tensor([[2.0, -2.0, 0.0], [-2.0, 3.0, -1.0], [0.0, -1.0, 1.0]], dtype=F64)
    torch.testing.assert_close(comparison_laplacian(pairs, 3), expected_l)
    # A tree is fitted exactly: u_a − u_b = 0.4, u_b − u_c = 0.2.
    assert float(repeated[0] - repeated[1]) == pytest.approx(0.4, abs=1e-12)
    assert float(repeated[1] - repeated[2]) == pytest.approx(0.2, abs=1e-12)


def test_tie_keeps_reference_ratio_on_bridge_and_isolated_pair():
    """A tie q = ½ on a bridge edge, or on a pair of its own, leaves the two actions
    at the reference ratio (least-squares residuals form a circulation, which is zero on a bridge)."""
    reference = torch.tensor([0.1, 0.15, 0.2, 0.25, 0.12, 0.18], dtype=F64)
    # triangle a,b,c with soft labels; bridge c–d is a tie; e–f is a separate tie.
    pairs = [(0, 1), (1, 2), (0, 2), (2, 3), (4, 5)]
    q = [0.9, 0.7, 0.8, 0.5, 0.5]
    solution = ipo_closed_form(pairs, reference, beta=0.3, preference=q)
    pi, ref = solution.policy, reference
    assert float(pi[2] / pi[3]) == pytest.approx(float(ref[2] / ref[3]), rel=1e-12)
    assert float(pi[4] / pi[5]) == pytest.approx(float(ref[4] / ref[5]), rel=1e-12)
    # The soft-labelled triangle does move away from the reference.
    assert float(pi[0] / pi[1]) > 1.2 * float(ref[0] / ref[1])
    assert solution.component.tolist() == [0, 0, 0, 0, 1, 1]


def test_pinning_matches_plain_gradient_descent_on_a_disconnected_graph():
    """Two components (a,b,c) and (d,e) plus an untouched action f: full-batch gradient descent on logits started at
    log π_ref conserves each component's logit sum, so it converges to the minimum-norm policy π_ref·exp(L⁺b)."""
    reference = torch.tensor([0.3, 0.1, 0.1, 0.2, 0.1, 0.2], dtype=F64)
    pairs = torch.tensor([(0, 1), (1, 2), (0, 2), (3, 4)])
    q = torch.tensor([1.0, 0.8, 0.6, 0.9], dtype=F64)
    beta = 0.5
    shift = (q - 0.5) / beta
    logits = torch.log(reference).clone()
    for _ in range(2000):  # hand-written gradient of Σ (Δ − (q − ½)/β)² with respect to the logits
        x = logits - torch.log(reference)  # u = x − log Z, and Δ = u_w − u_l = x_w − x_l
        residual = (x[pairs[:, 0]] - x[pairs[:, 1]]) - shift
        grad = torch.zeros_like(logits).index_add_(0, pairs[:, 0], 2 * residual)
        grad = grad.index_add_(0, pairs[:, 1], -2 * residual)
        logits -= 0.05 * grad
    solution = ipo_closed_form(pairs, reference, beta, preference=q)
    torch.testing.assert_close(torch.softmax(logits, 0), solution.policy, rtol=0, atol=1e-10)
    assert solution.num_components == 3
    assert float(solution.logratio[5]) == 0.0
    for members in ([0, 1, 2], [3, 4]):
        assert abs(float(solution.logratio[members].sum())) < 1e-12


def test_connected_components_ignore_zero_weight_pairs():
    labels = connected_components([(0, 1), (1, 2), (3, 4)], 5, weights=[1.0, 0.0, 1.0])
    assert labels.tolist() == [0, 0, 1, 2, 2]


def _random_preference_matrix(rng, k):
    """A random preference matrix: entries in [0, 1], P[i, i] = ½, P + Pᵀ = 1."""
    upper = rng.uniform(0, 1, size=(k, k))
    p = np.triu(upper, 1)
    p = p + np.tril(1 - p.T, -1)
    np.fill_diagonal(p, 0.5)
    return p


def _minimise(objective, k):
    """Numerically minimise an objective of the log-ratio of a softmax policy (LBFGS on the logits, float64)."""
    logits = torch.zeros(k, dtype=F64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [logits], lr=1.0, max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        optimiser.zero_grad()
        loss = objective(torch.log_softmax(logits, 0))
        loss.backward()
        return loss

    optimiser.step(closure)
    return torch.softmax(logits.detach(), 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_score_difference_and_pairwise_regressions_have_the_same_minimiser(seed):
    """For a random preference matrix P and a random μ, minimising the score-difference and the pairwise
    regressions numerically gives the same policy (1e-4), and it is π* ∝ π_ref·exp(p(y ≻ μ)/β)."""
    rng = np.random.default_rng(seed)
    k, beta = 5, 0.4
    p = _random_preference_matrix(rng, k)
    check_preference_matrix(p)
    mu = rng.dirichlet(np.ones(k))
    reference = torch.tensor(rng.dirichlet(np.ones(k)), dtype=F64)
    log_ref = torch.log(reference)

    # the policy's log-ratio u = log π − log π_ref; minimising over logits θ with π = softmax(θ)
    pi_scores = _minimise(lambda logp: population_loss_score_difference(logp - log_ref, p, mu, beta), k)
    pi_pairs = _minimise(lambda logp: population_loss_pairwise(logp - log_ref, p, mu, beta), k)
    assert (pi_scores - pi_pairs).abs().max() < 1e-4
    # independent closed form, written out here: s = P μ, π ∝ π_ref exp(s/β)
    expected = reference.numpy() * np.exp(p @ mu / beta)
    expected /= expected.sum()
    np.testing.assert_allclose(pi_scores.numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(population_optimum(p, mu, reference, beta).numpy(), expected, atol=1e-12)


def test_score_difference_minus_pairwise_regression_is_constant():
    """The two population regressions differ by a constant independent of the policy (docs/theory.md)."""
    rng = np.random.default_rng(3)
    k = 4
    p = _random_preference_matrix(rng, k)
    mu = rng.dirichlet(np.ones(k))
    u = torch.randn(16, k, dtype=F64, generator=torch.Generator().manual_seed(0)) * 3
    gap = population_loss_score_difference(u, p, mu, 0.8) - population_loss_pairwise(u, p, mu, 0.8)
    assert float(gap.max() - gap.min()) < 1e-12
    assert float(gap.abs().max()) > 1e-3  # the objectives themselves differ


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.5, 1.2], [-0.2, 0.5]], "not a probability"),
        ([[0.4, 0.6], [0.4, 0.6]], "P\\[0, 0\\]"),
        ([[0.5, 0.7], [0.7, 0.5]], "must be 1"),
        ([[0.5, 0.5, 0.5]], "square"),
    ],
)
def test_preference_matrix_checks_name_the_entry(matrix, message):
    with pytest.raises(ValueError, match=message):
        check_preference_matrix(matrix)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(pairs=[(0, 3)]), "outside 0..2"),
        (dict(pairs=[(1, 1)]), "with itself"),
        (dict(pairs=[(0, 1)], preference=[1.5]), "pair 0 is 1.5"),
        (dict(pairs=[(0, 1), (1, 2)], preference=[0.5]), "one q per pair"),
        (dict(pairs=[(0, 1)], weights=[-1.0]), "weight of pair 0"),
        (dict(pairs=[(0, 1)], reference=[0.0, 0.5, 0.5]), "strictly positive"),
        (dict(pairs=[(0, 1)], beta=0.0), "beta must be > 0"),
        (dict(pairs=[]), "shape|empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = dict(reference=[1 / 3] * 3, beta=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ipo_closed_form(args.pop("pairs"), args.pop("reference"), **args)


def test_population_optimum_limits():
    """τ → ∞ gives the reference; a Condorcet winner under μ = δ_b gets π*(y) ∝ π_ref exp(P[y, b]/τ)."""
    p = np.array([[0.5, 0.9, 0.8], [0.1, 0.5, 0.6], [0.2, 0.4, 0.5]])
    ref = np.array([0.2, 0.5, 0.3])
    np.testing.assert_allclose(population_optimum(p, [1 / 3] * 3, ref, 1e9).numpy(), ref, atol=1e-8)
    got = population_optimum(p, [0.0, 1.0, 0.0], ref, 0.25).numpy()
    want = ref * np.exp(p[:, 1] / 0.25)
    np.testing.assert_allclose(got, want / want.sum(), atol=1e-12)
    assert math.isclose(got.sum(), 1.0)
