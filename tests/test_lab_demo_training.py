"""trl_ipo.lab.experiments.demo_training: a run's summary row and timed evaluations, against hand computations.

The demo's trainings run end to end in tests/test_demo.py (slow); these tests keep the module in the fast tier.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from trl_ipo.lab.experiments.demo_training import TimedEvaluator, final_row
from trl_ipo.lab.experiments.stage_times import StageTimes

BETA = 0.5
DELTAS = [0.2, 0.9, 1.5, 1.8, 2.1, 2.0, 2.2, 2.3]  # Δ at steps 1..8
LOG_HISTORY = [{"step": s, "rewards/margins": BETA * d, "loss": 1.0} for s, d in enumerate(DELTAS, start=1)]
LOG_HISTORY.append({"step": 8, "eval_rewards/margins": 99.0})  # an eval entry is not a training margin
HISTORY = [{"step": 0, "reward": 0.1, "kl": 0.0}, {"step": 8, "reward": 0.4, "kl": 0.3}]
SPEC = SimpleNamespace(beta=BETA, label="IPO β=0.5")


def test_budget_row_has_the_last_evaluation_and_the_last_margin():
    row = final_row(SPEC, "budget", HISTORY, LOG_HISTORY, 2.0, 12.5)
    assert row == {
        "step": 8,
        "reward": 0.4,
        "kl": 0.3,
        "label": "IPO β=0.5",
        "delta": 2.3,
        "target": 2.0,
        "train_s": 12.5,
    }


def test_converged_row_has_the_last_quarter_mean_trend_and_error():
    row = final_row(SPEC, "converged", HISTORY, LOG_HISTORY, 2.0, 1.0)
    steps, deltas = np.arange(6, 9), np.array(DELTAS[5:])  # the last quarter: steps >= 0.75 * 8
    slope = np.polyfit(steps, deltas, 1)[0]
    mean = deltas.mean()
    assert row["delta"] == pytest.approx(mean)
    assert row["trend"] == pytest.approx(slope * (8 - 6) / abs(mean))
    assert row["relative_error"] == pytest.approx(abs(mean - 2.0) / 2.0)
    no_target = final_row(SPEC, "converged", HISTORY, LOG_HISTORY, None, 1.0)
    assert "relative_error" not in no_target
    assert no_target["delta"] == pytest.approx(mean)


def test_row_without_logged_margins_has_no_delta():
    assert final_row(SPEC, "budget", HISTORY, [{"step": 1, "loss": 1.0}], None, 0.0)["delta"] is None


def test_timed_evaluator_charges_each_evaluation_to_its_stage():
    ticks = iter(range(100))
    times = StageTimes(wall_clock=lambda: float(next(ticks)), cpu_clock=lambda: 0.0)
    calls = []

    class Evaluator:
        def evaluate(self, policy, desc=None):
            calls.append((policy, desc))
            return {"reward": 1.0}

    timed = TimedEvaluator(Evaluator(), times)
    with times.stage("budget"):
        assert timed.evaluate("policy", "desc") == {"reward": 1.0}
    assert calls == [("policy", "desc")]
    stages = times.as_dict()
    assert stages["evaluation"]["calls"] == 1
    assert stages["budget"]["calls"] == 1
    # clock ticks: enter budget 0, enter evaluation 1, leave evaluation 2, leave budget 3
    assert stages["evaluation"]["wall_s"] == 1.0
    assert stages["budget"]["wall_s"] == 2.0
