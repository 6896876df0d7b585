"""The demo's claims, their verdicts and their evidence in words, checked against hand-made run records and
independent computations."""

import math

import numpy as np
import pytest

from trl_ipo.lab.experiments import claim_text as T
from trl_ipo.lab.experiments import claims as C

STEPS = list(range(10, 1001, 10))


def wiggle(i: int) -> float:
    """A fixed, zero-mean-ish perturbation (no randomness: the tests are exact)."""
    return 0.01 * math.sin(1.7 * i)


def run(
    method,
    beta,
    deltas,
    *,
    regime="converged",
    labels="deterministic",
    target=None,
    kl=None,
    kl_se=0.1,
    reward=0.0,
    reward_se=0.01,
    grammatical=1.0,
    steps=STEPS,
):
    """A run record as the demo writes it: Δ goes into ``rewards/margins`` = β·Δ, the end point into history."""
    return {
        "name": f"{regime}-{method}-b{beta:g}-{labels}",
        "label": f"{method} β={beta:g} ({labels})",
        "method": method,
        "beta": beta,
        "labels": labels,
        "regime": regime,
        "target": target,
        "log_history": [
            {"step": s, "rewards/margins": beta * d, "loss": 0.1} for s, d in zip(steps, deltas, strict=True)
        ]
        + [{"step": steps[-1], "train_runtime": 1.0}],
        "history": [
            {"step": 0, "kl": 0.0, "kl_stderr": 0.0, "reward": -0.1, "reward_stderr": reward_se, "grammatical": 0.9},
            {
                "step": steps[-1],
                "kl": kl,
                "kl_stderr": kl_se,
                "reward": reward,
                "reward_stderr": reward_se,
                "grammatical": grammatical,
            },
        ],
    }


def converging(target, scale=100.0):
    return [target * (1 - math.exp(-s / scale)) + wiggle(i) for i, s in enumerate(STEPS)]


def growing(beta):
    return [math.log(1 + s / 10) / beta + wiggle(i) for i, s in enumerate(STEPS)]


# --------------------------------------------------------------------------------------------------------- trend
def test_last_quarter_trend_matches_numpy_least_squares():
    values = [0.3 * s**0.5 + 2 * wiggle(i) for i, s in enumerate(STEPS)]
    got = C.last_quarter_trend(STEPS, values)
    x = np.array([s for s in STEPS if s >= 750], dtype=float)
    y = np.array([v for s, v in zip(STEPS, values, strict=True) if s >= 750])
    (slope, intercept), cov = np.polyfit(x, y, 1, cov="unscaled")
    residual_var = ((y - (slope * x + intercept)) ** 2).sum() / (len(x) - 2)
    assert got["points"] == len(x) == 26
    assert got["mean"] == pytest.approx(y.mean())
    assert got["start"] == pytest.approx(slope * 750 + intercept)
    assert got["end"] == pytest.approx(slope * 1000 + intercept)
    assert got["change"] == pytest.approx(slope * 250)
    assert got["change_stderr"] == pytest.approx(math.sqrt(residual_var * cov[0, 0]) * 250)
    assert got["relative_change"] == pytest.approx(slope * 250 / y.mean())


def test_last_quarter_trend_needs_three_points():
    assert C.last_quarter_trend([10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0]) is None  # only step 40 is ≥ 30
    assert C.last_quarter_trend([], []) is None
    exact = C.last_quarter_trend([0, 1, 2, 3, 4], [0.0, 1.0, 2.0, 3.0, 4.0])  # steps 3, 4: two points
    assert exact is None
    line = C.last_quarter_trend(list(range(0, 41)), [2.0 * s for s in range(0, 41)])
    assert line["change"] == pytest.approx(2.0 * 10)
    assert line["change_stderr"] == pytest.approx(0.0, abs=1e-9)


def test_margin_series_divides_trl_margins_by_beta_and_skips_eval_entries():
    log = [
        {"step": 10, "rewards/margins": 0.25},
        {"step": 10, "eval_rewards/margins": 9.0},
        {"step": 20, "rewards/margins": 0.5},
    ]
    assert C.margin_series(log, 0.5) == ([10, 20], [0.5, 1.0])


# -------------------------------------------------------------------------------------------- claims 1 and 2
def test_ipo_claim_holds_for_converged_margins_and_dpo_claim_for_growing_ones():
    runs = [run("ipo", b, converging(0.5 / b), target=0.5 / b, kl=1.0) for b in (0.1, 0.5, 1.0)]
    runs += [run("dpo", b, growing(b), kl=5.0) for b in (0.1, 0.5, 1.0)]
    ipo = C.claim_ipo_converges(runs)
    assert ipo["holds"] is True
    assert [e["beta"] for e in ipo["evidence"]] == [0.1, 0.5, 1.0]
    for e in ipo["evidence"]:
        last = [d for s, d in zip(STEPS, converging(0.5 / e["beta"]), strict=True) if s >= 750]
        assert e["delta"] == pytest.approx(sum(last) / len(last))
        assert e["relative_error"] == pytest.approx(abs(e["delta"] - e["target"]) / e["target"])
        assert e["relative_error"] < 0.01
        assert abs(e["trend"]) < 0.01
    dpo = C.claim_dpo_keeps_growing(runs)
    assert dpo["holds"] is True
    for e in dpo["evidence"]:
        # Δ = log(1 + t/10)/β: over the last quarter it rises by about log(101/76)/β, about 5.6 % of its level.
        expected = math.log(1 + 1000 / 10) - math.log(1 + 750 / 10)
        level = sum(math.log(1 + s / 10) for s in STEPS if s >= 750) / 26
        assert e["trend"] == pytest.approx(expected / level, rel=0.05)
        assert e["ipo_target"] == pytest.approx(0.5 / e["beta"])


def test_ipo_claim_does_not_hold_off_target_or_still_moving():
    off = [run("ipo", 0.5, converging(0.8), target=1.0, kl=1.0)]  # settles 20 % below its target
    verdict = C.claim_ipo_converges(off)
    assert verdict["holds"] is False
    assert verdict["evidence"][0]["relative_error"] == pytest.approx(0.2, abs=0.01)
    slow = [run("ipo", 0.5, converging(1.0, scale=600.0), target=1.0, kl=1.0)]  # still climbing at the end
    verdict = C.claim_ipo_converges(slow)
    assert verdict["holds"] is False
    assert verdict["evidence"][0]["trend"] > C.FLAT_TREND
    mixed = [run("ipo", 1.0, converging(0.5), target=0.5, kl=1.0), *off]
    assert C.claim_ipo_converges(mixed)["holds"] is False  # "at every β"


def test_dpo_claim_does_not_hold_when_a_margin_saturates():
    runs = [run("dpo", 0.1, growing(0.1), kl=9.0), run("dpo", 1.0, converging(3.0), kl=2.0)]
    verdict = C.claim_dpo_keeps_growing(runs)
    assert verdict["holds"] is False
    assert [e["growing"] for e in verdict["evidence"]] == [True, False]


def test_claims_without_their_runs_are_not_tested():
    budget_only = [run("dpo", 0.1, growing(0.1), regime="budget", kl=1.0)]
    for claim in C.evaluate_claims(budget_only):
        if claim["id"] != "budget_one_frontier":
            assert claim["holds"] is None, claim["id"]
    assert [c["id"] for c in C.evaluate_claims([])] == [
        "ipo_margin_converges",
        "dpo_margin_grows",
        "dpo_drift_not_controlled_by_beta",
        "drift_buys_no_reward",
        "budget_one_frontier",
        "soft_labels_drift_less",
    ]
    assert C.verdict(True) == "holds"
    assert C.verdict(False) == "does not hold"
    assert C.verdict(None) == "not tested at this budget"


# ------------------------------------------------------------------------------------------------------ claim 3
def kl_runs(dpo_kls, ipo_kls, betas=(0.1, 0.5, 1.0)):
    runs = []
    for beta, (kl, se) in zip(betas, dpo_kls, strict=True):
        runs.append(run("dpo", beta, growing(beta), kl=kl, kl_se=se))
    for beta, (kl, se) in zip(betas, ipo_kls, strict=True):
        runs.append(run("ipo", beta, converging(0.5 / beta), target=0.5 / beta, kl=kl, kl_se=se))
    return runs


def test_kl_ratios_and_fall_factors_by_hand():
    runs = kl_runs([(80.0, 6.0), (24.0, 3.0), (21.0, 2.0)], [(13.0, 1.0), (1.3, 0.2), (0.07, 0.1)])
    rows = C.kl_against_beta(runs)
    assert [r["beta"] for r in rows] == [0.1, 0.5, 1.0]
    assert [r["ratio"] for r in rows] == pytest.approx([80 / 13, 24 / 1.3, 21 / 0.07])
    claim = C.claim_kl_not_controlled(runs)
    assert claim["holds"] is True
    assert claim["evidence"]["dpo_fall"] == pytest.approx(80 / 21)
    assert claim["evidence"]["ipo_fall"] == pytest.approx(13 / 0.1)  # IPO's end KL 0.07 is floored at its s.e. 0.1


def test_kl_claim_does_not_hold_when_beta_controls_dpo_too():
    runs = kl_runs([(80.0, 6.0), (8.0, 1.0), (0.5, 0.05)], [(13.0, 1.0), (1.3, 0.2), (0.3, 0.05)])
    claim = C.claim_kl_not_controlled(runs)
    assert claim["evidence"]["dpo_fall"] == pytest.approx(160.0)
    assert claim["evidence"]["ipo_fall"] == pytest.approx(13 / 0.3)
    assert claim["holds"] is False


def test_kl_claim_does_not_hold_when_the_gap_is_within_noise():
    # At β = 1: DPO 2.0 ± 0.5 against IPO 1.0 ± 0.3: the gap 1.0 is below 2 · √(0.5² + 0.3²) ≈ 1.17.
    runs = kl_runs([(80.0, 6.0), (24.0, 3.0), (2.0, 0.5)], [(13.0, 1.0), (1.3, 0.2), (1.0, 0.3)])
    claim = C.claim_kl_not_controlled(runs)
    assert claim["evidence"]["dpo_further_at_every_beta"] is False
    assert claim["holds"] is False
    one_beta = kl_runs([(80.0, 6.0)], [(13.0, 1.0)], betas=(0.1,))
    assert C.claim_kl_not_controlled(one_beta)["holds"] is None


def test_negative_ipo_kl_estimate_gives_an_infinite_ratio_and_a_finite_fall_factor():
    runs = kl_runs([(80.0, 6.0), (21.0, 2.0)], [(13.0, 1.0), (-0.02, 0.05)], betas=(0.1, 1.0))
    rows = C.kl_against_beta(runs)
    assert rows[1]["ratio"] == math.inf
    assert C.claim_kl_not_controlled(runs)["evidence"]["ipo_fall"] == pytest.approx(13 / 0.05)


# ------------------------------------------------------------------------------------------------------ claim 4
def test_drift_cost_claim_compares_rewards_within_their_standard_errors():
    runs = kl_runs([(80.0, 6.0), (21.0, 2.0)], [(13.0, 1.0), (0.6, 0.1)], betas=(0.1, 1.0))
    rewards = {
        ("dpo", 0.1): (-1.4, 0.02, 0.05),
        ("ipo", 0.1): (-1.2, 0.05, 0.2),
        ("dpo", 1.0): (-1.2, 0.05, 0.2),
        ("ipo", 1.0): (-0.2, 0.05, 0.8),
    }
    for r in runs:
        reward, se, grammatical = rewards[r["method"], r["beta"]]
        r["history"][-1].update(reward=reward, reward_stderr=se, grammatical=grammatical)
    claim = C.claim_drift_costs(runs)
    assert claim["holds"] is True
    first = claim["evidence"][0]
    assert (first["reward_dpo"], first["reward_ipo"]) == (-1.4, -1.2)
    assert first["reward_stderr"] == pytest.approx(math.sqrt(0.02**2 + 0.05**2))
    assert (first["grammatical_dpo"], first["grammatical_ipo"]) == (0.05, 0.2)
    # DPO ahead by 0.3 at β = 1 with s.e. √(0.05² + 0.05²) ≈ 0.07: the drift bought reward there.
    runs[1]["history"][-1]["reward"] = 0.1
    assert C.claim_drift_costs(runs)["holds"] is False


# ------------------------------------------------------------------------------------------------------ claim 5
def budget_run(method, beta, kl, reward, se=0.02, grammatical=0.95):
    return run(
        method, beta, growing(beta), regime="budget", kl=kl, reward=reward, reward_se=se, grammatical=grammatical
    )


def test_frontier_claim_fits_one_line_through_the_reference_and_stable_runs():
    reference = {"reward": -0.1, "reward_stderr": 0.02}
    runs = [
        budget_run("dpo", 0.1, 2.0, 0.1 + 0.005),
        budget_run("dpo", 0.5, 1.0, 0.0),
        budget_run("ipo", 0.1, 1.0, 0.0 - 0.005),
        budget_run("ipo", 0.5, 0.1, -0.09),
        budget_run("rlhf", 0.1, 8.7, -1.5, grammatical=0.0),
    ]
    claim = C.claim_one_frontier(runs, reference)
    xs = np.array([2.0, 1.0, 1.0, 0.1, 0.0])
    ys = np.array([0.105, 0.0, -0.005, -0.09, -0.1])
    slope, intercept = np.polyfit(xs, ys, 1)
    assert claim["evidence"]["slope"] == pytest.approx(slope)
    assert claim["evidence"]["intercept"] == pytest.approx(intercept)
    assert claim["holds"] is True
    assert [e["run"] for e in claim["evidence"]["left_the_language"]] == ["rlhf β=0.1 (deterministic)"]
    residuals = [e["residual"] for e in claim["evidence"]["runs"]]
    assert residuals == pytest.approx(list(ys[:4] - (slope * xs[:4] + intercept)))
    runs[1]["history"][-1]["reward"] = 0.2  # DPO β = 0.5 well above the others' line
    assert C.claim_one_frontier(runs, reference)["holds"] is False
    assert C.claim_one_frontier([r for r in runs if r["method"] == "dpo"], None)["holds"] is None


# ------------------------------------------------------------------------------------------------------ claim 6
def test_soft_label_claim_needs_convergence_to_the_soft_target_and_less_drift():
    hard = run("ipo", 0.1, converging(5.0), labels="noisy", target=5.0, kl=12.0, kl_se=1.0, reward=-1.2)
    soft = run("ipo_soft", 0.1, converging(2.2), labels="noisy", target=2.2, kl=4.0, kl_se=0.5, reward=-0.5)
    claim = C.claim_soft_labels([hard, soft])
    assert claim["holds"] is True
    e = claim["evidence"][0]
    assert (e["target_hard"], e["target_soft"], e["kl_hard"], e["kl_soft"]) == (5.0, 2.2, 12.0, 4.0)
    assert e["delta_soft"] == pytest.approx(2.2, rel=1e-3)
    assert e["delta_hard"] == pytest.approx(5.0, rel=1e-3)
    soft["history"][-1]["kl"] = 11.0  # within 2 s.e. of the hard-label run
    assert C.claim_soft_labels([hard, soft])["holds"] is False
    soft["history"][-1]["kl"] = 4.0
    soft["target"] = 3.0  # the margin did not reach its target
    assert C.claim_soft_labels([hard, soft])["holds"] is False
    assert C.claim_soft_labels([hard])["holds"] is None


# ------------------------------------------------------------------------------------------- the claims in words
def test_every_claim_has_a_formatter_and_missing_runs_read_no_runs():
    assert set(T.FORMATTERS) == {c["id"] for c in C.evaluate_claims([])}
    for claim in C.evaluate_claims([]):  # no runs at all: every claim's evidence is empty
        assert T.claim_numbers(claim) == "no runs", claim["id"]
    unknown = {"id": "a_later_claim", "statement": "s", "holds": None, "evidence": {"x": 1.5}}
    assert T.claim_numbers(unknown) == '{"x": 1.5}'


def test_margin_claims_in_words_with_hand_computed_numbers():
    # IPO at β = 0.5 flat at Δ = 0.8 against its target 1: 20 % off, no trend; it does not hold.
    # DPO at β = 0.1 on the line Δ = s/100: over the last quarter (steps 750…1000, mean 8.75) the line rises
    # 2.5, +28.6 % of its level, with no residual; its end is 10.
    runs = [
        run("ipo", 0.5, [0.8] * len(STEPS), target=1.0, kl=1.0),
        run("dpo", 0.1, [s / 100 for s in STEPS], kl=5.0),
    ]
    ipo, dpo = C.claim_ipo_converges(runs), C.claim_dpo_keeps_growing(runs)
    assert ipo["holds"] is False
    assert dpo["holds"] is True
    assert T.claim_numbers(ipo) == "β=0.5: Δ 0.8 vs 1 (20.0% off), trend +0.0%"
    assert T.claim_numbers(dpo) == "β=0.1: Δ 10 (IPO target 5), trend +28.6% ± 0.0%"


def test_kl_claim_in_words_holds_and_does_not_hold():
    holds = C.claim_kl_not_controlled(
        kl_runs([(80.0, 6.0), (24.0, 3.0), (21.0, 2.0)], [(13.0, 1.0), (1.3, 0.2), (0.07, 0.1)])
    )
    assert holds["holds"] is True
    # ratios 80/13, 24/1.3, 21/0.07; falls 13/0.1 (IPO's 0.07 floored at its s.e.) and 80/21
    assert T.claim_numbers(holds) == (
        "β=0.1: KL DPO 80 ± 6, IPO 13 ± 1 (ratio 6.15); β=0.5: KL DPO 24 ± 3, IPO 1.3 ± 0.2 (ratio 18.5); "
        "β=1: KL DPO 21 ± 2, IPO 0.07 ± 0.1 (ratio 300); KL(β_min)/KL(β_max): IPO 130×, DPO 3.81×"
    )
    fails = C.claim_kl_not_controlled(kl_runs([(80.0, 6.0), (0.5, 0.05)], [(13.0, 1.0), (0.3, 0.05)], (0.1, 1.0)))
    assert fails["holds"] is False  # β cuts DPO's KL 160-fold, IPO's 43-fold
    assert T.claim_numbers(fails) == (
        "β=0.1: KL DPO 80 ± 6, IPO 13 ± 1 (ratio 6.15); β=1: KL DPO 0.5 ± 0.05, IPO 0.3 ± 0.05 (ratio 1.67); "
        "KL(β_min)/KL(β_max): IPO 43.3×, DPO 160×"
    )
    one_beta = C.claim_kl_not_controlled(kl_runs([(80.0, 6.0)], [(13.0, 1.0)], betas=(0.1,)))
    assert T.claim_numbers(one_beta) == "β=0.1: KL DPO 80 ± 6, IPO 13 ± 1 (ratio 6.15)"  # no fall factors


def test_drift_cost_claim_in_words_and_its_row_when_it_does_not_hold():
    runs = kl_runs([(21.0, 2.0)], [(0.6, 0.1)], betas=(1.0,))
    runs[0]["history"][-1].update(reward=0.1, reward_stderr=0.03, grammatical=0.25)
    runs[1]["history"][-1].update(reward=-0.2, reward_stderr=0.04, grammatical=0.8)
    claim = C.claim_drift_costs(runs)
    assert claim["holds"] is False  # DPO ahead by 0.3 with s.e. √(0.03² + 0.04²) = 0.05
    text = "β=1: reward DPO 0.100, IPO -0.200 (± 0.05); grammatical DPO 0.25, IPO 0.80"
    assert T.claim_numbers(claim) == text
    assert T.claim_rows([claim]) == [
        {"number": "1", "statement": claim["statement"], "numbers": text, "verdict": "**does not hold**"}
    ]
    assert T.claim_lines([claim]) == [f"  1. [does not hold] {claim['statement']}", f"     {text}"]


def test_frontier_claim_in_words_lists_the_line_the_residuals_and_the_runs_that_left():
    reference = {"reward": 0.0, "reward_stderr": 0.02}
    # Points (0, 0), (1, 0.1), (2, 0.2) and (1, 0.1): the line reward = 0 + 0.1·KL, every residual 0.
    runs = [
        budget_run("dpo", 0.1, 2.0, 0.2, se=0.05),
        budget_run("ipo", 0.1, 1.0, 0.1, se=0.04),
        budget_run("ipo", 0.5, 1.0, 0.1, se=0.04),
        budget_run("rlhf", 0.1, 8.5, -1.5, grammatical=0.0),
    ]
    claim = C.claim_one_frontier(runs, reference)
    assert claim["holds"] is True
    assert T.claim_numbers(claim) == (
        "line: reward = 0.000 + 0.100·KL; "
        "dpo β=0.1 (deterministic): KL 2, reward 0.200, off the line by +0.000 (2 s.e. 0.100); "
        "ipo β=0.1 (deterministic): KL 1, reward 0.100, off the line by +0.000 (2 s.e. 0.080); "
        "ipo β=0.5 (deterministic): KL 1, reward 0.100, off the line by +0.000 (2 s.e. 0.080); "
        "rlhf β=0.1 (deterministic) left the language (grammatical 0.00, KL 8.5)"
    )
    alone = C.claim_one_frontier(runs[:1], None)  # one method, one point: no line, not tested
    assert alone["holds"] is None
    assert T.claim_numbers(alone) == "no runs"


def test_soft_label_claim_in_words_when_the_margin_missed_its_target():
    hard = run("ipo", 0.1, [5.0] * len(STEPS), labels="noisy", target=5.0, kl=12.0, kl_se=1.0, reward=-1.2)
    soft = run("ipo_soft", 0.1, [2.0] * len(STEPS), labels="noisy", target=2.5, kl=4.0, kl_se=0.5, reward=-0.5)
    claim = C.claim_soft_labels([hard, soft])
    assert claim["holds"] is False  # the soft margin 2 is 20 % below its target 2.5
    assert T.claim_numbers(claim) == (
        "β=0.1: soft Δ 2 vs target 2.5 (20.0% off), hard Δ 5 vs 5; KL soft 4 ± 0.5, hard 12 ± 1; "
        "reward soft -0.500, hard -1.200"
    )
