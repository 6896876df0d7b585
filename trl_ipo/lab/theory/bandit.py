"""Gradient-based IPO and DPO on a softmax policy over K actions (Azar et al. 2023 §5.4), the experiment runner,
and the table / learning-curve rendering behind ``trl-ipo bandit``.

Policy: π_θ = softmax(θ) over K actions, θ initialised at log π_ref, so u = log π_θ − log π_ref starts at 0.
Each step draws a batch of ``batch_size`` pairs from the dataset uniformly with replacement and takes one Adam step
on the batch-mean loss, with Δ = u(y_w) − u(y_l) and τ the regularisation strength (``IPOConfig.beta``):

* IPO (Azar et al. 2023 eq. 17):  (Δ − t/τ)²  with t from :func:`trl_ipo.losses.ipo_target` — t = ½ for a hard
  label with the symmetric augmentation, t = q − ½ for a soft label q; computed by :func:`trl_ipo.losses.ipo_loss`
  (a single action has one "token", so the log-prob reduction plays no role);
* DPO (Rafailov et al. 2023 eq. 7):  −q·log σ(τΔ) − (1 − q)·log σ(−τΔ)  (q = 1 for hard labels).

All runs — every seed, every τ, both losses — are one (S, M, T, K) parameter tensor under a single Adam optimiser.
Adam acts element-wise, so this is exactly M·S·T independent Adam runs, only batched. Seed s fixes the sequence of
sampled batches (the same for every τ and both losses, i.e. common random numbers).

The paper's Figure 1 setting: D1 = {(a, b), (b, c), (a, c)}, uniform π_ref, τ ∈ {0.1, 0.5, 1, 2, 10}, Adam with
learning rate 0.01, batch 9, 18,000 steps. There the sampled IPO loss has the closed form u* = (1/(3τ), 0, −1/(3τ))
(:mod:`trl_ipo.lab.theory.finite`), while DPO drives π(a) → 1 whatever τ (σ(τΔ) → 1 needs Δ → ∞; docs/theory.md, "DPO").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ...losses import ipo_loss, ipo_target
from .finite import as_pairs, check_distribution, ipo_closed_form

__all__ = [
    "D1",
    "PAPER_TAUS",
    "METHODS",
    "BanditResult",
    "dpo_bandit_loss",
    "ipo_bandit_loss",
    "train_softmax_bandit",
    "run_bandit",
    "student_t_975",
    "summarise",
    "render_table",
    "plot_curves",
    "parse_pairs",
    "write_outputs",
]

ACTIONS_ABC = ("a", "b", "c")
D1 = ((0, 1), (1, 2), (0, 2))  # a ≻ b, b ≻ c, a ≻ c
PAPER_TAUS = (0.1, 0.5, 1.0, 2.0, 10.0)
METHODS = ("ipo", "dpo")
DTYPE = torch.float64


def ipo_bandit_loss(delta: torch.Tensor, tau, preference: torch.Tensor | None = None, symmetric: bool = True):
    """Per-pair IPO loss (Δ − t/τ)² with τ a float or a tensor broadcasting against ``delta``.

    Computed by :func:`trl_ipo.losses.ipo_loss` (paper form). ``ipo_loss`` takes one scalar β, so every τ goes
    through it at once with β = 1 on the scaled margin τΔ, which is exact because the target t does not depend on β:
    (τΔ − t)² / τ² = (Δ − t/τ)².
    """
    tau = torch.as_tensor(tau, dtype=delta.dtype)
    return ipo_loss(tau * delta, torch.zeros_like(delta), 1.0, preference, symmetric) / tau**2


def dpo_bandit_loss(delta: torch.Tensor, tau, preference: torch.Tensor | None = None):
    """Per-pair DPO loss −q·log σ(τΔ) − (1 − q)·log σ(−τΔ); hard labels (q = 1) give −log σ(τΔ)."""
    logits = tau * delta
    if preference is None:
        return -F.logsigmoid(logits)
    return -(preference * F.logsigmoid(logits) + (1 - preference) * F.logsigmoid(-logits))


def _sample_batches(num_pairs: int, seeds: Sequence[int], steps: int, batch_size: int) -> torch.Tensor:
    """Pair indices, shape (steps, S, batch_size): for each seed its own generator, uniform with replacement."""
    draws = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        draws.append(torch.randint(num_pairs, (steps, batch_size), generator=generator))
    return torch.stack(draws, dim=1)


def _difference_operators(pairs: torch.Tensor, batch: torch.Tensor, num_actions: int) -> torch.Tensor:
    """E with E[..., k, b] = [k = w_b] − [k = l_b], so that Δ = x @ E for any x with Δ_b = x_{w_b} − x_{l_b}."""
    winners, losers = pairs[batch, 0], pairs[batch, 1]  # (..., B)
    ops = torch.zeros(*batch.shape[:-1], num_actions, batch.shape[-1], dtype=DTYPE)
    ops.scatter_(-2, winners.unsqueeze(-2), 1.0)
    ops.scatter_add_(-2, losers.unsqueeze(-2), torch.full_like(ops[..., :1, :], -1.0))
    return ops


def train_softmax_bandit(
    pairs,
    reference,
    taus: Sequence[float],
    seeds: Sequence[int],
    methods: Sequence[str] = METHODS,
    preference=None,
    symmetric: bool = True,
    steps: int = 18_000,
    batch_size: int = 9,
    lr: float = 0.01,
    record_every: int = 100,
):
    """Train softmax policies with IPO and/or DPO for every (method, seed, τ) at once.

    Parameterisation: logits θ = log π_ref + x with x initialised at 0 (Adam's update does not see the constant
    shift). The margin of a pair needs no normaliser: u = x − log Σ_k π_ref(k) e^{x_k}, so Δ = u_w − u_l = x_w − x_l,
    computed for the whole batch as one product x @ E (see ``_difference_operators``).

    The gradients are written out: ∂/∂Δ of the batch mean is 2(Δ − t/τ)/B for IPO (the derivative of
    :func:`ipo_bandit_loss`) and τ(σ(τΔ) − q)/B for DPO (of :func:`dpo_bandit_loss`), then ∂/∂x = (∂/∂Δ) @ Eᵀ, and
    ``torch.optim.Adam`` takes the step. Without autograd's bookkeeping a step costs about a third as much; the
    tests check the result against autograd through :func:`trl_ipo.losses.ipo_loss`.

    Returns ``(recorded_steps, curves)``: ``curves`` has shape (R, M, S, T, K) with the policy after each
    recorded step (step 0 = the reference; the last entry is the final policy).
    """
    reference = check_distribution(reference)
    num_actions = reference.shape[0]
    pairs = as_pairs(pairs, num_actions)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be a non-empty subset of {METHODS}; got {list(methods)}")
    if not taus or any(not tau > 0 for tau in taus):
        raise ValueError(f"every tau must be > 0; got {list(taus)}")
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if steps < 1 or batch_size < 1 or record_every < 1:
        raise ValueError(f"steps, batch_size and record_every must be >= 1; got {steps}, {batch_size}, {record_every}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    q = None if preference is None else torch.as_tensor(preference, dtype=DTYPE)
    if q is not None and (q.shape != (pairs.shape[0],) or not ((q >= 0) & (q <= 1)).all()):
        raise ValueError(f"preference must hold one q in [0, 1] per pair ({pairs.shape[0]}); got {q.tolist()}")

    return _train(pairs, reference, taus, seeds, methods, q, symmetric, steps, batch_size, lr, record_every)


def _train(pairs, reference, taus, seeds, methods, q, symmetric, steps, batch_size, lr, record_every):
    """The training loop of :func:`train_softmax_bandit` on validated inputs."""
    num_actions = reference.shape[0]
    n_m, n_s, n_t = len(methods), len(seeds), len(taus)
    log_ref = torch.log(reference)
    # Stored seed-major, (S, M, T, K), so that every product with the per-seed operators is one plain bmm.
    x = torch.zeros(n_s, n_m, n_t, num_actions, dtype=DTYPE)
    tau_col = torch.tensor([float(t) for t in taus], dtype=DTYPE)[:, None]  # (T, 1), broadcasts over (S, T, B)
    batches = _sample_batches(pairs.shape[0], seeds, steps, batch_size)  # (steps, S, B)
    optimiser = torch.optim.Adam([x], lr=lr, foreach=False)
    chunk = 1000
    dpo_scale = tau_col / batch_size

    def policy() -> torch.Tensor:  # (M, S, T, K)
        return torch.softmax(log_ref + x, -1).permute(1, 0, 2, 3).clone()

    recorded_steps, curves = [0], [policy()]
    for start in range(0, steps, chunk):
        index = batches[start : start + chunk]
        ops = _difference_operators(pairs, index, num_actions)  # (chunk, S, K, B)
        q_chunk = None if q is None else q[index][:, :, None, :]  # (chunk, S, 1, B)
        # IPO regression target t/τ per pair (the symmetric or plain target of trl_ipo.losses.ipo_target).
        ipo_shift = ipo_target(q_chunk, symmetric, like=torch.zeros(index.shape[0], n_s, 1, batch_size, dtype=DTYPE))
        ipo_shift = ipo_shift / tau_col
        for offset in range(index.shape[0]):
            q_batch = None if q_chunk is None else q_chunk[offset]
            # Δ = x @ E per seed, (S, M, T, B)
            delta = torch.bmm(x.view(n_s, n_m * n_t, num_actions), ops[offset]).view(n_s, n_m, n_t, batch_size)
            grads = []
            for m, method in enumerate(methods):
                if method == "ipo":
                    grads.append((delta[:, m] - ipo_shift[offset]).mul_(2.0 / batch_size))
                elif q_batch is None:
                    grads.append(torch.sigmoid(delta[:, m] * -tau_col).mul_(dpo_scale).neg_())
                else:
                    scaled = tau_col * delta[:, m]
                    g = (1 - q_batch) * torch.sigmoid(scaled) - q_batch * torch.sigmoid(-scaled)
                    grads.append(g.mul_(dpo_scale))
            grad_delta = torch.stack(grads, dim=1).view(n_s, n_m * n_t, batch_size)
            x.grad = torch.bmm(grad_delta, ops[offset].mT).view_as(x)
            optimiser.step()
            step = start + offset + 1
            if step % record_every == 0 or step == steps:
                recorded_steps.append(step)
                curves.append(policy())
    return torch.tensor(recorded_steps), torch.stack(curves)


@dataclass
class BanditResult:
    """One bandit experiment: its setting, the learning curves and the exact IPO solution per τ."""

    actions: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    reference: torch.Tensor  # (K,)
    taus: tuple[float, ...]
    seeds: tuple[int, ...]
    methods: tuple[str, ...]
    steps: int
    batch_size: int
    lr: float
    recorded_steps: torch.Tensor  # (R,)
    curves: torch.Tensor  # (R, M, S, T, K)
    closed_form: torch.Tensor  # (T, K) the exact IPO policy π* ∝ π_ref exp(L⁺ b)
    preference: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def final(self) -> torch.Tensor:
        """Final policies, shape (M, S, T, K)."""
        return self.curves[-1]

    def method_index(self, method: str) -> int:
        return self.methods.index(method)

    def to_json(self) -> dict:
        summary = summarise(self)
        return {
            "setting": {
                "actions": list(self.actions),
                "pairs": [[self.actions[w], self.actions[l]] for w, l in self.pairs],
                "preference": None if self.preference is None else list(self.preference),
                "reference": self.reference.tolist(),
                "taus": list(self.taus),
                "seeds": list(self.seeds),
                "steps": self.steps,
                "batch_size": self.batch_size,
                "lr": self.lr,
                "optimiser": "Adam",
            },
            "closed_form_ipo": {str(tau): self.closed_form[j].tolist() for j, tau in enumerate(self.taus)},
            "final": {
                method: {
                    str(tau): {"mean": summary[method]["mean"][j].tolist(), "ci95": summary[method]["ci95"][j].tolist()}
                    for j, tau in enumerate(self.taus)
                }
                for method in self.methods
            },
            **self.meta,
        }


# The training parameters repeat train_softmax_bandit's on purpose: each is a flag of `trl-ipo bandit`, passed through.
def run_bandit(
    pairs=D1,
    actions: Sequence[str] = ACTIONS_ABC,
    reference=None,
    taus: Sequence[float] = PAPER_TAUS,
    seeds: Sequence[int] = tuple(range(10)),
    methods: Sequence[str] = METHODS,
    preference=None,
    symmetric: bool = True,
    steps: int = 18_000,
    batch_size: int = 9,
    lr: float = 0.01,
    record_every: int = 100,
) -> BanditResult:
    """The paper's bandit experiment (defaults: Figure 1, D1) plus the exact IPO policy for every τ."""
    actions = tuple(actions)
    if reference is None:
        reference = torch.full((len(actions),), 1.0 / len(actions), dtype=DTYPE)
    reference = check_distribution(reference, len(actions))
    pairs_t = as_pairs(pairs, len(actions))
    recorded, curves = train_softmax_bandit(
        pairs_t, reference, taus, seeds, methods, preference, symmetric, steps, batch_size, lr, record_every
    )
    closed = torch.stack([ipo_closed_form(pairs_t, reference, tau, preference, symmetric).policy for tau in taus])
    return BanditResult(
        actions=actions,
        pairs=tuple(tuple(p) for p in pairs_t.tolist()),
        reference=reference,
        taus=tuple(float(t) for t in taus),
        seeds=tuple(int(s) for s in seeds),
        methods=tuple(methods),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        recorded_steps=recorded,
        curves=curves,
        closed_form=closed,
        preference=None if preference is None else tuple(float(x) for x in torch.as_tensor(preference).tolist()),
    )


# ----------------------------------------------------------------------------------------------------------------
# Summaries: mean ± 95% confidence interval over seeds (Student t, n − 1 degrees of freedom).

# Two-sided 95% quantiles t_{0.975, df} for df = 1..30; beyond 30 the normal value is within 2%.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def student_t_975(df: int) -> float:
    """t_{0.975} with ``df`` degrees of freedom (1.96 for df > 30); NaN for df < 1."""
    if df < 1:
        return float("nan")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def summarise(result: BanditResult, curves: bool = False) -> dict:
    """Per method: ``mean`` and ``ci95`` half-width (t_{0.975, n−1} · sd / √n) over seeds of the final policy,
    shape (T, K) each, or with ``curves=True`` of every recorded policy, shape (R, T, K). One seed: NaN half-width."""
    n = len(result.seeds)
    out = {}
    for m, method in enumerate(result.methods):
        values, seed_dim = (result.curves[:, m], 1) if curves else (result.final[m], 0)
        mean = values.mean(seed_dim)
        if n > 1:
            half = student_t_975(n - 1) * values.std(seed_dim, correction=1) / math.sqrt(n)
        else:
            half = torch.full_like(mean, float("nan"))
        out[method] = {"mean": mean, "ci95": half}
    return out


def _fmt(mean: float, half: float) -> str:
    if math.isnan(half):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {half:.4f}"


def render_table(result: BanditResult) -> str:
    """Markdown table of final action probabilities: per τ, IPO and DPO (mean ± 95% CI over seeds) and the
    exact IPO policy."""
    summary = summarise(result)
    names = {"ipo": "IPO (Adam)", "dpo": "DPO (Adam)"}
    header = "| τ | method | " + " | ".join(f"π({a})" for a in result.actions) + " |"
    rule = "|---:|:---|" + "---:|" * len(result.actions)
    lines = [header, rule]
    for j, tau in enumerate(result.taus):
        for method in result.methods:
            cells = [
                _fmt(float(summary[method]["mean"][j, k]), float(summary[method]["ci95"][j, k]))
                for k in range(len(result.actions))
            ]
            lines.append(f"| {tau:g} | {names[method]} | " + " | ".join(cells) + " |")
        exact = [f"{float(x):.4f}" for x in result.closed_form[j]]
        lines.append(f"| {tau:g} | IPO exact (L⁺b) | " + " | ".join(exact) + " |")
    return "\n".join(lines)


def plot_curves(result: BanditResult, path, dpi: int = 90) -> None:
    """One panel per τ: π(action) against the step, IPO solid and DPO dashed (mean over seeds, 95% CI band),
    the exact IPO policy dotted."""
    from matplotlib import rcParams
    from matplotlib.figure import Figure

    summary = summarise(result, curves=True)
    steps = result.recorded_steps.numpy()
    n_t = len(result.taus)
    fig = Figure(figsize=(3.2 * n_t, 3.0))
    axes = fig.subplots(1, n_t, sharey=True, squeeze=False)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"ipo": "-", "dpo": "--"}
    for j, tau in enumerate(result.taus):
        ax = axes[0, j]
        for k, action in enumerate(result.actions):
            colour = colours[k % len(colours)]
            for method in result.methods:
                mean = summary[method]["mean"][:, j, k].numpy()
                half = summary[method]["ci95"][:, j, k].numpy()
                ax.plot(steps, mean, styles[method], color=colour, lw=1.4, label=f"{method.upper()} π({action})")
                if len(result.seeds) > 1:
                    ax.fill_between(steps, mean - half, mean + half, color=colour, alpha=0.15, lw=0)
            ax.axhline(float(result.closed_form[j, k]), color=colour, ls=":", lw=1.0)
        ax.set_title(f"τ = {tau:g}")
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("action probability")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    data = ", ".join(f"{result.actions[w]}≻{result.actions[l]}" for w, l in result.pairs)
    lines = " vs ".join(f"{m.upper()} ({'solid' if styles[m] == '-' else 'dashed'})" for m in result.methods)
    fig.suptitle(f"{lines} on {{{data}}}; dotted: exact IPO policy", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=dpi)


def parse_pairs(text: str) -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """Parse ``"a>b,b>c,a>c"`` into (actions in order of first appearance, index pairs (winner, loser))."""
    actions: list[str] = []
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if item.count(">") != 1:
            raise ValueError(f"pair {item!r} must read 'winner>loser' (e.g. 'a>b')")
        winner, loser = (name.strip() for name in item.split(">"))
        if not winner or not loser:
            raise ValueError(f"pair {item!r} has an empty action name")
        for name in (winner, loser):
            if name not in actions:
                actions.append(name)
        pairs.append((actions.index(winner), actions.index(loser)))
    return tuple(actions), tuple(pairs)


def write_outputs(result: BanditResult, out_dir, plot: bool = True) -> dict:
    """Write ``bandit_table.md``, ``bandit_results.json`` and (optionally) ``bandit_curves.png``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / "bandit_table.md", "json": out / "bandit_results.json"}
    paths["table"].write_text(render_table(result) + "\n")
    paths["json"].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if plot:
        paths["png"] = out / "bandit_curves.png"
        plot_curves(result, paths["png"])
    return paths
