"""Exact IPO on a finite action set: the sampled loss as least squares on the comparison graph, and the
population optimum of the identity-preference objective (docs/theory.md, "From RLHF to IPO").

Setting (one prompt, Azar et al. 2023 §5.4). Actions y_1..y_K, a reference policy π_ref with full support, and
log-ratios u(y) = log π(y) − log π_ref(y). A dataset is a list of pairs (w, l) — "w was labelled over l" — with an
optional soft label q ∈ [0, 1] per pair (q = 1 hard, q = ½ tie) and any multiplicity (repeat a pair, or give it a
weight). With β the regularisation strength (the paper's τ) and t the target of :func:`trl_ipo.losses.ipo_target`
(t = q − ½ with the symmetric augmentation, t = q without), the sampled IPO loss (Azar et al. 2023 eq. 17) is

    J(u) = Σ_p  m_p · (u_{w_p} − u_{l_p} − t_p/β)².

This is linear least squares ‖B u − s‖²_m with the signed incidence matrix B (row p: +1 at w_p, −1 at l_p) and
s_p = t_p/β. Its normal equations are

    L u = b,   L = Bᵀ M B (the weighted graph Laplacian of the comparison graph),   b = Bᵀ M s,
    b_i = Σ_{p: w_p = i} m_p s_p − Σ_{p: l_p = i} m_p s_p,

and every solution is u* = L⁺ b + (a constant on each connected component of the graph).

Which constant (the pinning). The data only see differences inside a component, so one constant per component is
free; the policy π* ∝ π_ref · exp(u*) is therefore unique only when the comparison graph is connected (actions
that no pair touches are components of their own). We return the minimum-norm solution L⁺ b: u* sums to zero on
every component, and an untouched action keeps u* = 0. This is exactly what gradient descent on softmax logits
started at log π_ref converges to: the loss gradient adds +g to the winner's logit and −g to the loser's, so the
sum of logit shifts over each component stays at its initial value 0. (Adaptive optimisers such as Adam rescale
coordinates separately, so with a disconnected graph they may settle on another per-component offset; the
differences inside a component are the same.)

Population optimum. For a preference matrix P (P[i, j] = p(y_i ≻ y_j): entries in [0, 1], P[i, i] = ½,
P + Pᵀ = 1) and a behaviour policy μ, the score is s(y) = p(y ≻ μ) = Σ_j P[y, j] μ_j. The score-difference
regression (Azar et al. eq. 13, times β²)

    E_{y1, y2 ~ μ} [ (β(u(y1) − u(y2)) − (s(y1) − s(y2)))² ],

and the pairwise one (regress onto P[y1, y2] instead, Azar et al. eq. 16 up to a constant) differ by a constant
(derived in docs/theory.md), and are minimised by β u = s + const on the support of μ, i.e.
π* ∝ π_ref · exp(p(y ≻ μ)/β) (Azar et al. eq. 7 with τ = β).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...losses import ipo_target

__all__ = [
    "FiniteIPOSolution",
    "as_pairs",
    "comparison_laplacian",
    "comparison_rhs",
    "connected_components",
    "ipo_logratios",
    "ipo_closed_form",
    "policy_from_logratios",
    "sampled_ipo_loss",
    "check_distribution",
    "check_preference_matrix",
    "preference_against",
    "population_loss_score_difference",
    "population_loss_pairwise",
    "population_optimum",
]

DTYPE = torch.float64


@dataclass(frozen=True)
class FiniteIPOSolution:
    """The exact minimiser of the sampled IPO loss on K actions.

    ``logratio``: u* = L⁺ b (minimum-norm: zero sum on each connected component), shape (K,).
    ``policy``: π* ∝ π_ref · exp(u*), shape (K,).
    ``component``: the connected component of each action (labels 0, 1, ... in order of first appearance).
    """

    logratio: torch.Tensor
    policy: torch.Tensor
    component: torch.Tensor

    @property
    def num_components(self) -> int:
        return int(self.component.max()) + 1 if self.component.numel() else 0


def as_pairs(pairs, num_actions: int) -> torch.Tensor:
    """Validate ``pairs`` — a sequence of (winner, loser) action indices, or an int tensor of shape (P, 2)."""
    pairs = torch.as_tensor(pairs, dtype=torch.long)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must have shape (num_pairs, 2) as (winner, loser); got shape {tuple(pairs.shape)}")
    if pairs.shape[0] == 0:
        raise ValueError("pairs is empty: the IPO loss needs at least one comparison")
    bad = (pairs < 0) | (pairs >= num_actions)
    if bad.any():
        row = int(torch.nonzero(bad.any(dim=1))[0])
        raise ValueError(f"pair {row} = {pairs[row].tolist()} names an action outside 0..{num_actions - 1}")
    same = pairs[:, 0] == pairs[:, 1]
    if same.any():
        row = int(torch.nonzero(same)[0])
        raise ValueError(f"pair {row} compares action {int(pairs[row, 0])} with itself")
    return pairs


def _weights(weights, num_pairs: int) -> torch.Tensor:
    if weights is None:
        return torch.ones(num_pairs, dtype=DTYPE)
    weights = torch.as_tensor(weights, dtype=DTYPE)
    if weights.shape != (num_pairs,):
        raise ValueError(f"weights must have one entry per pair ({num_pairs}); got shape {tuple(weights.shape)}")
    if (weights < 0).any() or not torch.isfinite(weights).all():
        row = int(torch.nonzero((weights < 0) | ~torch.isfinite(weights))[0])
        raise ValueError(f"weight of pair {row} is {float(weights[row])!r}; weights must be finite and >= 0")
    return weights


def _preference(preference, num_pairs: int) -> torch.Tensor | None:
    if preference is None:
        return None
    preference = torch.as_tensor(preference, dtype=DTYPE)
    if preference.shape != (num_pairs,):
        raise ValueError(f"preference must have one q per pair ({num_pairs}); got shape {tuple(preference.shape)}")
    bad = ~((preference >= 0) & (preference <= 1))
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        raise ValueError(f"preference of pair {row} is {float(preference[row])!r}; q must lie in [0, 1]")
    return preference


def check_distribution(reference, num_actions: int | None = None, name: str = "reference", positive: bool = True):
    """A probability vector over the actions; the reference needs full support, a behaviour policy may have zeros."""
    reference = torch.as_tensor(reference, dtype=DTYPE)
    if reference.ndim != 1 or (num_actions is not None and reference.shape[0] != num_actions):
        raise ValueError(f"{name} must be a probability vector over {num_actions} actions; got {reference.tolist()}")
    ok = (reference > 0).all() if positive else (reference >= 0).all()
    if not ok or abs(float(reference.sum()) - 1.0) > 1e-9:
        rule = "strictly positive" if positive else "non-negative"
        raise ValueError(f"{name} must be {rule} and sum to 1; got {reference.tolist()}")
    return reference


def comparison_laplacian(pairs, num_actions: int, weights=None) -> torch.Tensor:
    """L = Bᵀ M B: L[i, i] = total weight of pairs touching i, L[i, j] = −(weight of pairs between i and j)."""
    pairs = as_pairs(pairs, num_actions)
    m = _weights(weights, pairs.shape[0])
    incidence = torch.zeros(pairs.shape[0], num_actions, dtype=DTYPE)
    rows = torch.arange(pairs.shape[0])
    incidence[rows, pairs[:, 0]] = 1.0
    incidence[rows, pairs[:, 1]] = -1.0
    return incidence.T @ (m[:, None] * incidence)


def comparison_rhs(pairs, num_actions: int, beta: float, preference=None, symmetric: bool = True, weights=None):
    """b = Bᵀ M s with s_p = t_p/β (the regression target of each pair, in log-ratio units)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    pairs = as_pairs(pairs, num_actions)
    m = _weights(weights, pairs.shape[0])
    q = _preference(preference, pairs.shape[0])
    s = ipo_target(q, symmetric, like=torch.zeros(pairs.shape[0], dtype=DTYPE)) / beta
    b = torch.zeros(num_actions, dtype=DTYPE)
    b.index_add_(0, pairs[:, 0], m * s)
    b.index_add_(0, pairs[:, 1], -m * s)
    return b


def connected_components(pairs, num_actions: int, weights=None) -> torch.Tensor:
    """Component label of each action in the comparison graph (pairs with weight 0 connect nothing)."""
    pairs = as_pairs(pairs, num_actions)
    m = _weights(weights, pairs.shape[0])
    parent = list(range(num_actions))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (w, l), weight in zip(pairs.tolist(), m.tolist(), strict=True):
        if weight > 0:
            parent[find(w)] = find(l)
    labels: dict[int, int] = {}
    return torch.tensor([labels.setdefault(find(i), len(labels)) for i in range(num_actions)], dtype=torch.long)


def ipo_logratios(pairs, num_actions: int, beta: float, preference=None, symmetric: bool = True, weights=None):
    """u* = L⁺ b, the minimum-norm minimiser of the sampled IPO loss (zero sum on each connected component)."""
    laplacian = comparison_laplacian(pairs, num_actions, weights)
    b = comparison_rhs(pairs, num_actions, beta, preference, symmetric, weights)
    u = torch.linalg.pinv(laplacian, hermitian=True) @ b
    # Remove the rounding residue along the null space so the pinning holds to machine precision.
    component = connected_components(pairs, num_actions, weights)
    sums = torch.zeros(int(component.max()) + 1, dtype=DTYPE).index_add_(0, component, u)
    counts = torch.bincount(component).to(DTYPE)
    return u - (sums / counts)[component]


def policy_from_logratios(logratio: torch.Tensor, reference) -> torch.Tensor:
    """π ∝ π_ref · exp(u), normalised over the actions (last dimension)."""
    reference = torch.as_tensor(reference, dtype=logratio.dtype)
    return torch.softmax(torch.log(reference) + logratio, dim=-1)


def ipo_closed_form(pairs, reference, beta: float, preference=None, symmetric: bool = True, weights=None):
    """The exact sampled-IPO policy: u* = L⁺ b and π* ∝ π_ref · exp(u*) (see the module docstring)."""
    reference = check_distribution(reference)
    num_actions = reference.shape[0]
    u = ipo_logratios(pairs, num_actions, beta, preference, symmetric, weights)
    return FiniteIPOSolution(
        logratio=u,
        policy=policy_from_logratios(u, reference),
        component=connected_components(pairs, num_actions, weights),
    )


def sampled_ipo_loss(logratio: torch.Tensor, pairs, beta: float, preference=None, symmetric=True, weights=None):
    """J(u) = Σ_p m_p (u_w − u_l − t_p/β)², the objective that :func:`ipo_logratios` minimises exactly."""
    num_actions = logratio.shape[-1]
    pairs = as_pairs(pairs, num_actions)
    m = _weights(weights, pairs.shape[0]).to(logratio.dtype)
    q = _preference(preference, pairs.shape[0])
    s = ipo_target(q, symmetric, like=torch.zeros(pairs.shape[0], dtype=logratio.dtype)) / beta
    delta = logratio[..., pairs[:, 0]] - logratio[..., pairs[:, 1]]
    return ((delta - s) ** 2 * m).sum(-1)


# ----------------------------------------------------------------------------------------------------------------
# Population level: a full preference matrix and a behaviour policy μ (Azar et al. 2023 §5; docs/theory.md).


def check_preference_matrix(preference_matrix, atol: float = 1e-9) -> torch.Tensor:
    """Return P as float64 after checking that it is a preference matrix: entries in [0, 1], diagonal ½, P + Pᵀ = 1."""
    p = torch.as_tensor(preference_matrix, dtype=DTYPE)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"preference matrix must be square (K, K); got shape {tuple(p.shape)}")
    bad = ~((p >= 0) & (p <= 1))
    if bad.any():
        i, j = torch.nonzero(bad)[0].tolist()
        raise ValueError(f"P[{i}, {j}] = {float(p[i, j])!r} is not a probability")
    diag = (torch.diagonal(p) - 0.5).abs() > atol
    if diag.any():
        i = int(torch.nonzero(diag)[0])
        raise ValueError(f"P[{i}, {i}] = {float(p[i, i])!r}; an action ties with itself, P[i, i] = 0.5")
    asym = (p + p.T - 1).abs() > atol
    if asym.any():
        i, j = torch.nonzero(asym)[0].tolist()
        raise ValueError(
            f"P[{i}, {j}] + P[{j}, {i}] = {float(p[i, j] + p[j, i])!r}; must be 1 (p(y ≻ y′) + p(y′ ≻ y) = 1)"
        )
    return p


def preference_against(preference_matrix, behaviour) -> torch.Tensor:
    """s(y) = p(y ≻ μ) = Σ_j P[y, j] μ_j, the identity-preference reward of Azar et al. eq. 8."""
    p = check_preference_matrix(preference_matrix)
    mu = check_distribution(behaviour, p.shape[0], "behaviour policy", positive=False)
    return p @ mu


def population_loss_score_difference(logratio: torch.Tensor, preference_matrix, behaviour, beta: float) -> torch.Tensor:
    """E_{y1,y2~μ}[(β(u(y1) − u(y2)) − E_{y~μ}[v(y1, y) − v(y2, y)])²], regression (A) of docs/theory.md
    (Azar et al. eq. 13, times β²)."""
    p = check_preference_matrix(preference_matrix).to(logratio.dtype)
    mu = check_distribution(behaviour, p.shape[0], "behaviour policy", positive=False).to(logratio.dtype)
    score = p @ mu
    h = beta * (logratio[..., :, None] - logratio[..., None, :])
    target = score[:, None] - score[None, :]
    return ((h - target) ** 2 * (mu[:, None] * mu[None, :])).sum((-2, -1))


def population_loss_pairwise(logratio: torch.Tensor, preference_matrix, behaviour, beta: float) -> torch.Tensor:
    """E_{y1,y2~μ}[(β(u(y1) − u(y2)) − v(y1, y2))²], onto the pairwise preference (Azar et al. eq. 16
    up to a constant, times β²)."""
    p = check_preference_matrix(preference_matrix).to(logratio.dtype)
    mu = check_distribution(behaviour, p.shape[0], "behaviour policy", positive=False).to(logratio.dtype)
    h = beta * (logratio[..., :, None] - logratio[..., None, :])
    return ((h - p) ** 2 * (mu[:, None] * mu[None, :])).sum((-2, -1))


def population_optimum(preference_matrix, behaviour, reference, tau: float) -> torch.Tensor:
    """π*(y) ∝ π_ref(y) · exp(p(y ≻ μ)/τ): the minimiser of both population regressions and the optimum of the
    identity-preference objective, Azar et al. eq. 6–7 (τ = β)."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    score = preference_against(preference_matrix, behaviour)
    reference = check_distribution(reference, score.shape[0])
    return policy_from_logratios(score / tau, reference)
