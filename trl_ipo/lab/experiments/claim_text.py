"""The evidence of each claim of :mod:`trl_ipo.lab.experiments.claims` in a few words, for tables and the terminal.

One formatter per claim id, each reading the evidence keys its claim writes (see the ``claim_*`` functions there);
:func:`claim_numbers` picks it by the claim's ``id``. A claim without runs gives ``"no runs"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from .claims import verdict

__all__ = ["CLAIM_COLUMNS", "FORMATTERS", "claim_lines", "claim_numbers", "claim_rows"]

#: Columns of the claims table (keys of :func:`claim_rows`' rows, headers).
CLAIM_COLUMNS = [("number", "#"), ("statement", "claim"), ("numbers", "numbers"), ("verdict", "verdict")]
NO_RUNS = "no runs"


def _ipo_margin_converges(evidence: list[dict]) -> list[str]:
    return [
        f"β={e['beta']:g}: Δ {e['delta']:.3g} vs {e['target']:.3g} ({e['relative_error']:.1%} off), "
        f"trend {e['trend']:+.1%}"
        for e in evidence
    ]


def _dpo_margin_grows(evidence: list[dict]) -> list[str]:
    return [
        f"β={e['beta']:g}: Δ {e['delta_end']:.3g} (IPO target {e['ipo_target']:.3g}), "
        f"trend {e['trend']:+.1%} ± {e['trend_stderr']:.1%}"
        for e in evidence
    ]


def _dpo_drift_not_controlled_by_beta(evidence: dict) -> list[str]:
    parts = [
        f"β={r['beta']:g}: KL DPO {r['kl_dpo']:.3g} ± {r['kl_dpo_stderr']:.2g}, IPO {r['kl_ipo']:.3g} ± "
        f"{r['kl_ipo_stderr']:.2g} (ratio {r['ratio']:.3g})"
        for r in evidence["per_beta"]
    ]
    if "ipo_fall" in evidence:
        parts.append(f"KL(β_min)/KL(β_max): IPO {evidence['ipo_fall']:.3g}×, DPO {evidence['dpo_fall']:.3g}×")
    return parts


def _drift_buys_no_reward(evidence: list[dict]) -> list[str]:
    return [
        f"β={e['beta']:g}: reward DPO {e['reward_dpo']:.3f}, IPO {e['reward_ipo']:.3f} "
        f"(± {e['reward_stderr']:.2g}); grammatical DPO {e['grammatical_dpo']:.2f}, "
        f"IPO {e['grammatical_ipo']:.2f}"
        for e in evidence
    ]


def _budget_one_frontier(evidence: dict) -> list[str]:
    parts = [
        f"{e['run']}: KL {e['kl']:.3g}, reward {e['reward']:.3f}, off the line by {e['residual']:+.3f} "
        f"(2 s.e. {2 * (e['reward_stderr'] or 0):.3f})"
        for e in evidence["runs"]
    ]
    if "slope" in evidence:
        parts.insert(0, f"line: reward = {evidence['intercept']:.3f} + {evidence['slope']:.3f}·KL")
    parts += [
        f"{e['run']} left the language (grammatical {e['grammatical']:.2f}, KL {e['kl']:.3g})"
        for e in evidence["left_the_language"]
    ]
    return parts


def _soft_labels_drift_less(evidence: list[dict]) -> list[str]:
    return [
        f"β={e['beta']:g}: soft Δ {e['delta_soft']:.3g} vs target {e['target_soft']:.3g} "
        f"({e['relative_error_soft']:.1%} off), hard Δ {e['delta_hard']:.3g} vs "
        f"{e['target_hard']:.3g}; KL soft {e['kl_soft']:.3g} ± {e['kl_soft_stderr']:.2g}, hard "
        f"{e['kl_hard']:.3g} ± {e['kl_hard_stderr']:.2g}; reward soft {e['reward_soft']:.3f}, "
        f"hard {e['reward_hard']:.3f}"
        for e in evidence
    ]


#: claim id → the phrases of its evidence (one per β or run, in the evidence's order).
FORMATTERS: dict[str, Callable] = {
    "ipo_margin_converges": _ipo_margin_converges,
    "dpo_margin_grows": _dpo_margin_grows,
    "dpo_drift_not_controlled_by_beta": _dpo_drift_not_controlled_by_beta,
    "drift_buys_no_reward": _drift_buys_no_reward,
    "budget_one_frontier": _budget_one_frontier,
    "soft_labels_drift_less": _soft_labels_drift_less,
}


def claim_numbers(claim: dict) -> str:
    """The evidence of a claim in a few words, phrases joined by "; " ("no runs" when it has none).

    A claim id without a formatter (a claim added later) shows its evidence as JSON.
    """
    formatter = FORMATTERS.get(claim["id"])
    if formatter is None:
        return json.dumps(claim["evidence"], default=float)
    return "; ".join(formatter(claim["evidence"])) or NO_RUNS


def claim_rows(claims: Sequence[dict]) -> list[dict]:
    """Rows of the report's claims table (:data:`CLAIM_COLUMNS`), numbered from 1, verdicts in bold."""
    return [
        {
            "number": str(i),
            "statement": c["statement"],
            "numbers": claim_numbers(c),
            "verdict": f"**{verdict(c['holds'])}**",
        }
        for i, c in enumerate(claims, 1)
    ]


def claim_lines(claims: Sequence[dict]) -> list[str]:
    """The claims for the terminal: ``  i. [verdict] statement`` and, indented below, the numbers."""
    lines = []
    for i, claim in enumerate(claims, 1):
        lines.append(f"  {i}. [{verdict(claim['holds'])}] {claim['statement']}")
        lines.append(f"     {claim_numbers(claim)}")
    return lines
