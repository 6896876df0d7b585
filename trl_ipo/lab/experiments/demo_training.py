"""Training the runs of one regime of `trl-ipo demo` and turning each into a run record.

Every run starts from π_ref (:mod:`trl_ipo.lab.experiments.methods`) and is evaluated on the held-out prompts while it
trains (:class:`trl_ipo.lab.world.evaluate.EvaluationCallback`). Its record (:class:`RunRecord`) keeps the
evaluations, the trainer's logs and the row of the summary tables: the final evaluation, the last logged margin Δ, the
IPO target t/β and, in the converged regime, Δ's mean and trend over the last quarter of training.
"""

from __future__ import annotations

import time
from pathlib import Path

from .claims import last_quarter_trend, margin_series
from .demo_console import Console, step_bar_callback
from .records import RunRecord
from .report import logged_target
from .stage_times import StageTimes

__all__ = ["TimedEvaluator", "final_row", "train_regime"]


class TimedEvaluator:
    """An evaluator whose evaluations are charged to the ``"evaluation"`` stage of ``times``."""

    def __init__(self, evaluator, times: StageTimes):
        self.evaluator, self.times = evaluator, times

    def evaluate(self, policy, desc: str | None = None) -> dict:
        with self.times.stage("evaluation"):
            return self.evaluator.evaluate(policy, desc)


def final_row(spec, regime: str, history: list[dict], log_history: list[dict], target, train_s: float) -> dict:
    """The run's row of the summary tables.

    The last held-out evaluation, the label, the last logged Δ, the target and the training time; in the converged
    regime Δ is the mean over the last quarter of training instead, with its relative ``trend`` and, for IPO, its
    ``relative_error`` = |Δ − t/β| / |t/β|.
    """
    steps, deltas = margin_series(log_history, spec.beta)
    final = {
        **history[-1],
        "label": spec.label,
        "delta": deltas[-1] if deltas else None,
        "target": target,
        "train_s": train_s,
    }
    trend = last_quarter_trend(steps, deltas) if regime == "converged" else None
    if trend is not None:
        final.update(delta=trend["mean"], trend=trend["relative_change"])
        if target:
            final["relative_error"] = abs(trend["mean"] - target) / abs(target)
    return final


def train_regime(config, regime: str, specs, ref_dir, rows: dict, evaluators: dict, out: Path, console: Console, times):
    """Train and evaluate the runs of one regime under one progress bar; returns (run records, reward-model log).

    Preference runs are timed as the stage named ``regime``, RLHF runs (reward model and RLOO) as ``"rlhf"``, and every
    held-out evaluation as ``"evaluation"`` (``evaluators`` are :class:`TimedEvaluator`).
    """
    from ..world.evaluate import EvaluationCallback
    from .methods import finish_wandb, train_preference_method, train_rlhf

    settings = config.train_settings(regime)
    every = config.eval_every if regime == "budget" else config.converged_eval_every
    total = sum(config.rl_steps if s.method == "rlhf" else settings.max_steps for s in specs)
    total += config.reward_steps if any(s.method == "rlhf" for s in specs) else 0
    runs, reward_model, reward_model_log = [], None, []
    with console.bar(total, f"{regime} regime") as bar:
        step_bar = step_bar_callback(bar)
        for spec in specs:
            bar.set_postfix_str(spec.label)
            callback = EvaluationCallback(evaluators[spec.labels], every, spec.name)
            run_dir = out / "runs" / spec.name
            t0 = time.time()
            if spec.method == "rlhf":
                with times.stage("rlhf"):
                    trainer, reward_trainer = train_rlhf(
                        spec,
                        ref_dir,
                        rows[spec.labels],
                        settings,
                        run_dir,
                        [callback, step_bar],
                        config.report_to,
                        reward_model,
                        reward_callbacks=[step_bar],
                    )
                if reward_trainer is not None:
                    reward_model = reward_trainer.model
                    reward_model_log = reward_trainer.state.log_history
            else:
                with times.stage(regime):
                    trainer = train_preference_method(
                        spec, ref_dir, rows[spec.labels], settings, run_dir, [callback, step_bar], config.report_to
                    )
            train_s = time.time() - t0
            finish_wandb(config.report_to)
            log_history = trainer.state.log_history
            target = logged_target(log_history) if config.logp_reduction == "sum" else None
            record = RunRecord(
                name=spec.name,
                label=spec.label,
                method=spec.method,
                beta=spec.beta,
                labels=spec.labels,
                regime=regime,
                group=f"{regime}, {spec.labels}",
                pairs=len(rows[spec.labels]),
                target=target,
                history=callback.history,
                log_history=log_history,
                final=final_row(spec, regime, callback.history, log_history, target, train_s),
            )
            runs.append(record.to_dict())
            del trainer
    return runs, reward_model_log
