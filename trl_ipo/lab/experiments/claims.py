"""The claims `trl-ipo demo` tests, each computed from the run records and given a verdict.

The claims are those of the IPO paper's argument (Azar et al. 2023, "A General Theoretical Paradigm to Understand
Learning from Human Preferences", §4.2 and §5): with deterministic preferences on a finite data set, DPO's
log-ratio margin Δ grows without bound whatever β (its logistic loss has no finite minimiser), so β does not keep the
policy near π_ref; IPO's squared loss (eq. 17) has its minimum at the finite margin t/β (1/(2β) for hard labels), so
its margins settle there.

A run record is a dict as `trl-ipo demo` writes it to ``results.json``:

* ``method`` (``"dpo"``, ``"ipo"``, ``"ipo_soft"``, ``"rlhf"``), ``beta``, ``labels`` (``"deterministic"`` or
  ``"noisy"``), ``regime`` (``"budget"`` or ``"converged"``), ``target`` (IPO's mean logged target, else None);
* ``log_history``: the trainer's log entries; Δ = ``rewards/margins`` / β at each logged step;
* ``history``: held-out measurements over steps (``kl``, ``kl_stderr``, ``reward``, ``reward_stderr``,
  ``grammatical``); the last one is the run's end point.

Each claim is a dict ``{"id", "statement", "holds", "evidence"}``: ``holds`` is True, False, or None when the runs
needed to test it are missing (e.g. a preset without a β sweep). The thresholds are the module constants below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: IPO's margin has converged when the mean Δ over the last quarter of training is this close to its target (relative).
TARGET_TOLERANCE = 0.10
#: ... and the least-squares trend over the last quarter moves it by at most this fraction of its level.
FLAT_TREND = 0.05
#: DPO's margin "keeps growing" when the trend over the last quarter raises it by at least this fraction of its level
#: and by more than ``SIGNIFICANCE`` standard errors of that change.
GROWING_TREND = 0.05
#: Differences count when they exceed this many (combined) standard errors.
SIGNIFICANCE = 2.0
#: Runs whose samples are grammatical less often than this have left the language (e.g. reward hacking) and are not
#: points of the reward–KL frontier.
GRAMMATICAL_FLOOR = 0.5


# ------------------------------------------------------------------------------------------------------- run series
def margin_series(log_history: Sequence[dict], beta: float) -> tuple[list[int], list[float]]:
    """(steps, Δ) from a preference trainer's train logs: Δ = ``rewards/margins`` / β (summed log-ratio margin)."""
    steps, deltas = [], []
    for entry in log_history:
        if "rewards/margins" in entry and "eval_rewards/margins" not in entry:
            steps.append(int(entry["step"]))
            deltas.append(float(entry["rewards/margins"]) / beta)
    return steps, deltas


def last_quarter_trend(steps: Sequence[float], values: Sequence[float]) -> dict | None:
    """Level and trend of ``values`` over the last quarter of training (steps ≥ ¾ of the last step).

    A least-squares line through the points of the last quarter gives ``start`` and ``end`` (its values at the
    quarter's first and last step), ``change`` = end − start with its standard error ``change_stderr`` (from the
    residuals), ``relative_change`` = change / |mean| and ``mean`` (the mean over the quarter). None with fewer than
    three points in the quarter.
    """
    if len(steps) != len(values):
        raise ValueError("steps and values must have the same length")
    if not steps:
        return None
    cut = 0.75 * max(steps)
    points = [(float(s), float(v)) for s, v in zip(steps, values, strict=True) if s >= cut]
    n = len(points)
    if n < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    residual_ss = sum((y - my - slope * (x - mx)) ** 2 for x, y in points)
    slope_stderr = math.sqrt(residual_ss / (n - 2) / sxx)
    span = xs[-1] - xs[0]
    change = slope * span
    return {
        "points": n,
        "mean": my,
        "start": my + slope * (xs[0] - mx),
        "end": my + slope * (xs[-1] - mx),
        "change": change,
        "change_stderr": slope_stderr * span,
        "relative_change": change / abs(my) if my else math.inf,
    }


def end_point(run: dict) -> dict:
    """The run's last held-out measurement (``history[-1]``), or {} if it has none."""
    history = run.get("history") or []
    return history[-1] if history else {}


def _select(runs, method, regime, labels="deterministic"):
    chosen = [r for r in runs if r.get("method") == method and r.get("regime") == regime and r.get("labels") == labels]
    return sorted(chosen, key=lambda r: r["beta"])


def _claim(claim_id: str, statement: str, holds, evidence) -> dict:
    return {"id": claim_id, "statement": statement, "holds": holds, "evidence": evidence}


def _all_or_none(flags: list) -> bool | None:
    return None if not flags else all(flags)


def _significantly_less(a: float, a_se: float, b: float, b_se: float) -> bool:
    """a < b by more than ``SIGNIFICANCE`` combined standard errors (NaN errors count as 0)."""
    se = math.hypot(_finite(a_se), _finite(b_se))
    return b - a > SIGNIFICANCE * se


def _finite(x) -> float:
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


# ----------------------------------------------------------------------------------------------------------- claims
def claim_ipo_converges(runs: Sequence[dict], regime: str = "converged") -> dict:
    """Claim 1: IPO's margin Δ settles at its target t/β (1/(2β) for hard labels) at every β."""
    evidence, flags = [], []
    for run in _select(runs, "ipo", regime):
        trend = last_quarter_trend(*margin_series(run.get("log_history", []), run["beta"]))
        target = run.get("target")
        if trend is None or not target:
            continue
        error = abs(trend["mean"] - target) / abs(target)
        ok = error <= TARGET_TOLERANCE and abs(trend["relative_change"]) <= FLAT_TREND
        flags.append(ok)
        evidence.append(
            {
                "beta": run["beta"],
                "target": target,
                "delta": trend["mean"],
                "relative_error": error,
                "trend": trend["relative_change"],
                "trend_stderr": _relative(trend["change_stderr"], trend["mean"]),
                "converged": ok,
            }
        )
    statement = (
        f"IPO's margin Δ converges to its target 1/(2β) at every β: |Δ − target| / target ≤ {TARGET_TOLERANCE:.0%} "
        f"(Δ = mean over the last quarter of training) and Δ moves by at most {FLAT_TREND:.0%} over that quarter"
    )
    return _claim("ipo_margin_converges", statement, _all_or_none(flags), evidence)


def claim_dpo_keeps_growing(runs: Sequence[dict], regime: str = "converged") -> dict:
    """Claim 2: DPO's margin is still growing at the end at every β (no finite optimum on deterministic labels)."""
    evidence, flags = [], []
    for run in _select(runs, "dpo", regime):
        trend = last_quarter_trend(*margin_series(run.get("log_history", []), run["beta"]))
        if trend is None:
            continue
        ok = trend["relative_change"] >= GROWING_TREND and trend["change"] > SIGNIFICANCE * trend["change_stderr"]
        flags.append(ok)
        evidence.append(
            {
                "beta": run["beta"],
                "delta_end": trend["end"],
                "ipo_target": 0.5 / run["beta"],
                "trend": trend["relative_change"],
                "trend_stderr": _relative(trend["change_stderr"], trend["mean"]),
                "growing": ok,
            }
        )
    statement = (
        f"DPO's margin Δ keeps growing at every β: over the last quarter of training it rises by at least "
        f"{GROWING_TREND:.0%} and by more than {SIGNIFICANCE:g} standard errors, so DPO has no finite optimum here"
    )
    return _claim("dpo_margin_grows", statement, _all_or_none(flags), evidence)


def kl_against_beta(runs: Sequence[dict], regime: str = "converged") -> list[dict]:
    """Per β shared by DPO and IPO (deterministic labels): end KL ± s.e. of each, and the ratio DPO / IPO."""
    dpo = {r["beta"]: end_point(r) for r in _select(runs, "dpo", regime)}
    ipo = {r["beta"]: end_point(r) for r in _select(runs, "ipo", regime)}
    rows = []
    for beta in sorted(set(dpo) & set(ipo)):
        d, i = dpo[beta], ipo[beta]
        if "kl" not in d or "kl" not in i:
            continue
        rows.append(
            {
                "beta": beta,
                "kl_dpo": d["kl"],
                "kl_dpo_stderr": d.get("kl_stderr"),
                "kl_ipo": i["kl"],
                "kl_ipo_stderr": i.get("kl_stderr"),
                "ratio": d["kl"] / i["kl"] if i["kl"] > 0 else math.inf,
            }
        )
    return rows


def fall_factor(kl_low_beta: float, kl_high_beta: float, high_beta_stderr) -> float:
    """How many times smaller the KL is at the largest β than at the smallest: KL(β_min) / KL(β_max).

    The denominator is floored at its standard error, so an end KL indistinguishable from 0 gives a finite factor.
    """
    floor = max(kl_high_beta, _finite(high_beta_stderr))
    return kl_low_beta / floor if floor > 0 else math.inf


def claim_kl_not_controlled(runs: Sequence[dict], regime: str = "converged") -> dict:
    """Claim 3: β controls IPO's drift from π_ref, not DPO's.

    Holds when, at every β, DPO ends further from π_ref than IPO (by more than ``SIGNIFICANCE`` combined standard
    errors) and raising β from its smallest to its largest value cuts IPO's KL by a larger factor than DPO's.
    Needs at least two shared β.
    """
    rows = kl_against_beta(runs, regime)
    evidence = {"per_beta": rows}
    holds = None
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        dpo_fall = fall_factor(lo["kl_dpo"], hi["kl_dpo"], hi["kl_dpo_stderr"])
        ipo_fall = fall_factor(lo["kl_ipo"], hi["kl_ipo"], hi["kl_ipo_stderr"])
        further = [_significantly_less(r["kl_ipo"], r["kl_ipo_stderr"], r["kl_dpo"], r["kl_dpo_stderr"]) for r in rows]
        evidence.update(dpo_fall=dpo_fall, ipo_fall=ipo_fall, dpo_further_at_every_beta=all(further))
        holds = all(further) and ipo_fall > dpo_fall
    statement = (
        "DPO's drift from π_ref is not controlled by β the way IPO's is: at every β DPO ends further from π_ref "
        "(KL(π‖π_ref), beyond 2 s.e.), and raising β cuts IPO's KL by a larger factor than DPO's"
    )
    return _claim("dpo_drift_not_controlled_by_beta", statement, holds, evidence)


def claim_drift_costs(runs: Sequence[dict], regime: str = "converged") -> dict:
    """Claim 4: DPO's extra drift buys no ground-truth reward: at each β its end reward is not above IPO's.

    Holds when, at every shared β, DPO's end reward is below IPO's + ``SIGNIFICANCE`` combined standard errors.
    The evidence lists each run's end reward and grammatical share.
    """
    dpo = {r["beta"]: end_point(r) for r in _select(runs, "dpo", regime)}
    ipo = {r["beta"]: end_point(r) for r in _select(runs, "ipo", regime)}
    evidence, flags = [], []
    for beta in sorted(set(dpo) & set(ipo)):
        d, i = dpo[beta], ipo[beta]
        if "reward" not in d or "reward" not in i:
            continue
        se = math.hypot(_finite(d.get("reward_stderr")), _finite(i.get("reward_stderr")))
        ok = d["reward"] - i["reward"] <= SIGNIFICANCE * se
        flags.append(ok)
        evidence.append(
            {
                "beta": beta,
                "reward_dpo": d["reward"],
                "reward_ipo": i["reward"],
                "reward_stderr": se,
                "grammatical_dpo": d.get("grammatical"),
                "grammatical_ipo": i.get("grammatical"),
                "dpo_not_better": ok,
            }
        )
    statement = (
        "DPO's extra drift buys no ground-truth reward: at every β its end reward is not above IPO's "
        "(by more than 2 s.e.); the grammatical share shows how much of the language each run kept"
    )
    return _claim("drift_buys_no_reward", statement, _all_or_none(flags), evidence)


def claim_one_frontier(runs: Sequence[dict], reference: dict | None, regime: str = "budget") -> dict:
    """Claim 5: in the budget regime the methods share one reward–KL frontier.

    A least-squares line reward = a + b·KL through π_ref (KL 0) and every run of the regime that stayed in the language
    (grammatical share ≥ ``GRAMMATICAL_FLOOR``); holds when every such run lies within ``SIGNIFICANCE`` standard errors
    of its reward from the line. Runs that left the language are listed apart. Needs two methods and three points.
    """
    chosen = [r for r in runs if r.get("regime") == regime and "kl" in end_point(r) and "reward" in end_point(r)]
    stable = [r for r in chosen if _finite(end_point(r).get("grammatical")) >= GRAMMATICAL_FLOOR]
    left = [
        {
            "run": r.get("label", r.get("name")),
            "grammatical": end_point(r).get("grammatical"),
            "reward": end_point(r)["reward"],
            "kl": end_point(r)["kl"],
        }
        for r in chosen
        if r not in stable
    ]
    points = [(end_point(r)["kl"], end_point(r)["reward"], end_point(r).get("reward_stderr"), r) for r in stable]
    if reference is not None and "reward" in reference:
        points.append((0.0, reference["reward"], reference.get("reward_stderr"), None))
    evidence = {"left_the_language": left, "runs": []}
    holds = None
    if len({r.get("method") for r in stable}) >= 2 and len(points) >= 3:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        intercept = my - slope * mx
        flags = []
        for kl, reward, se, run in points:
            if run is None:
                continue
            residual = reward - (intercept + slope * kl)
            ok = abs(residual) <= SIGNIFICANCE * _finite(se)
            flags.append(ok)
            evidence["runs"].append(
                {
                    "run": run.get("label", run.get("name")),
                    "method": run.get("method"),
                    "kl": kl,
                    "reward": reward,
                    "reward_stderr": se,
                    "residual": residual,
                    "on_frontier": ok,
                }
            )
        evidence.update(slope=slope, intercept=intercept)
        holds = all(flags)
    statement = (
        "In the budget regime the methods share one reward–KL frontier: every run that stayed in the language lies "
        "within 2 s.e. (of its reward) of one line reward = a + b·KL through π_ref"
    )
    return _claim("budget_one_frontier", statement, holds, evidence)


def claim_soft_labels(runs: Sequence[dict], regime: str = "converged") -> dict:
    """Claim 6: on noisy preferences, soft targets (q − ½)/β settle IPO at a smaller margin than hard targets 1/(2β)
    and keep the policy closer to π_ref.

    Holds when the soft-label run's Δ converges to its own mean target (as in claim 1) and its end KL is below the
    hard-label run's by more than ``SIGNIFICANCE`` combined standard errors. End rewards are in the evidence.
    """
    hard = {r["beta"]: r for r in _select(runs, "ipo", regime, "noisy")}
    soft = {r["beta"]: r for r in _select(runs, "ipo_soft", regime, "noisy")}
    evidence, flags = [], []
    for beta in sorted(set(hard) & set(soft)):
        h, s = hard[beta], soft[beta]
        h_end, s_end = end_point(h), end_point(s)
        h_trend = last_quarter_trend(*margin_series(h.get("log_history", []), beta))
        s_trend = last_quarter_trend(*margin_series(s.get("log_history", []), beta))
        if None in (h_trend, s_trend) or not s.get("target") or "kl" not in h_end or "kl" not in s_end:
            continue
        s_error = abs(s_trend["mean"] - s["target"]) / abs(s["target"])
        s_converged = s_error <= TARGET_TOLERANCE and abs(s_trend["relative_change"]) <= FLAT_TREND
        closer = _significantly_less(s_end["kl"], s_end.get("kl_stderr"), h_end["kl"], h_end.get("kl_stderr"))
        ok = s_converged and closer
        flags.append(ok)
        evidence.append(
            {
                "beta": beta,
                "target_hard": h.get("target"),
                "delta_hard": h_trend["mean"],
                "target_soft": s["target"],
                "delta_soft": s_trend["mean"],
                "relative_error_soft": s_error,
                "trend_soft": s_trend["relative_change"],
                "kl_hard": h_end["kl"],
                "kl_hard_stderr": h_end.get("kl_stderr"),
                "kl_soft": s_end["kl"],
                "kl_soft_stderr": s_end.get("kl_stderr"),
                "reward_hard": h_end.get("reward"),
                "reward_soft": s_end.get("reward"),
                "grammatical_hard": h_end.get("grammatical"),
                "grammatical_soft": s_end.get("grammatical"),
            }
        )
    statement = (
        "On noisy preferences, soft labels settle IPO's margin at its mean soft target (q − ½)/β, below the hard "
        "target 1/(2β), and keep the policy closer to π_ref than hard labels (end KL lower beyond 2 s.e.)"
    )
    return _claim("soft_labels_drift_less", statement, _all_or_none(flags), evidence)


def evaluate_claims(runs: Sequence[dict], reference: dict | None = None) -> list[dict]:
    """All six claims, in report order."""
    return [
        claim_ipo_converges(runs),
        claim_dpo_keeps_growing(runs),
        claim_kl_not_controlled(runs),
        claim_drift_costs(runs),
        claim_one_frontier(runs, reference),
        claim_soft_labels(runs),
    ]


def verdict(holds) -> str:
    """The verdict's words: holds / does not hold / not tested at this budget."""
    return {True: "holds", False: "does not hold"}.get(holds, "not tested at this budget")


def _relative(value: float, level: float) -> float:
    return value / abs(level) if level else math.inf
