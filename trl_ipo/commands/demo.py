"""`trl-ipo demo`: RLHF vs DPO vs IPO on a synthetic task whose ground truth is known (no network, CPU, minutes).

The claim under test (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", §4.2 and §5): with deterministic preferences on a finite data set, DPO's margins grow without bound
whatever β, so β does not hold the policy near π_ref, while IPO's margins settle at 1/(2β).

Pipeline (each stage's numbers come from the runs; nothing is precomputed):

1. π_ref: a tiny Qwen2 + BPE tokenizer built locally, fine-tuned with TRL's SFTTrainer on the lab language
   (:mod:`trl_ipo.lab.world.language`).
2. Ground truth: a hidden reward r(x, y) and the preference model v(y, y′) = σ((r − r′)/T), deterministic (T → 0)
   and noisy (:mod:`trl_ipo.lab.world.reward`). Pairs y₁, y₂ ~ μ = π_ref per training prompt, labelled by sampling v;
   q = v(chosen, rejected) kept (:mod:`trl_ipo.lab.world.preferences`). Held-out evaluation of π_ref and of an oracle.
3. Budget regime: many pairs, few epochs. DPO (TRL DPOTrainer), IPO (trl_ipo.IPOTrainer) and RLHF (TRL
   RewardTrainer + RLOOTrainer with a KL penalty to π_ref) on the same pairs and step budget, a β sweep for each
   (:mod:`trl_ipo.lab.experiments.methods`); compared on one reward–KL frontier.
4. Converged regime: a small subset of the same pairs, many epochs. DPO and IPO on a shared β sweep with the
   deterministic labels, and IPO with hard and soft labels on the noisy labels.
5. Claims computed from the runs, each with a verdict (:mod:`trl_ipo.lab.experiments.claims`); ``report.md``, PNG
   plots and ``results.json`` in ``--output_dir``; the tables on the terminal (:mod:`trl_ipo.lab.experiments.report`).

Held-out measurements (:mod:`trl_ipo.lab.world.evaluate`): reward, win rate vs π_ref under v, KL(π‖π_ref), grammatical
share, over training steps. Library output (warnings, per-dataset bars, weight-loading reports) goes to ``demo.log``
in the output folder; the terminal shows the stages, one progress bar per stage and the final tables.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import command_summary
from ..lab.experiments.methods import settings_from, shared_setting

HELP = command_summary("demo")
PROG = "trl-ipo demo"


def _option(default, help_text: str):
    """A DemoConfig field with the help text of its command-line flag."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class DemoConfig:
    """Everything the demo does is set here; ``PRESETS`` holds the named variants."""

    output_dir: str = "outputs/demo"
    seed: int = shared_setting("seed")
    threads: int = _option(1, "torch threads (default 1: fastest for these tiny models)")
    report_to: str = "none"
    progress: bool = True
    # π_ref: model size and its SFT
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    sft_examples: int = 3200
    sft_steps: int = 200
    sft_batch_size: int = 32
    sft_learning_rate: float = 3e-3
    # preference data (sampled once; the converged regime uses the first pairs of each prompt)
    num_eval_prompts: int = 8
    pairs_per_prompt: int = _option(48, "pairs sampled per training prompt (budget)")
    noisy_temperature: float = 0.25
    max_new_tokens: int = shared_setting("max_new_tokens")
    # shared optimiser settings (TrainSettings' fields, defaults and help text)
    batch_size: int = shared_setting("batch_size")
    learning_rate: float = shared_setting("learning_rate")
    logging_steps: int = shared_setting("logging_steps")
    logp_reduction: str = shared_setting("logp_reduction")
    # budget regime: all the pairs, a few epochs; methods and β sweeps
    dpo_betas: tuple[float, ...] = _option((0.1, 0.5), "β of the budget-regime DPO runs")
    ipo_betas: tuple[float, ...] = _option((0.1, 0.5), "β of the budget-regime IPO runs")
    rlhf_betas: tuple[float, ...] = _option((0.1, 0.5), "KL coefficients of the RLHF runs")
    max_steps: int = shared_setting("max_steps", 200, "optimiser steps of each budget-regime preference run")
    reward_steps: int = shared_setting("reward_steps")
    rl_steps: int = shared_setting("rl_steps", 200)
    rl_learning_rate: float = shared_setting("rl_learning_rate")
    rl_num_generations: int = shared_setting("rl_num_generations")
    eval_every: int = 25
    # converged regime: a small set of pairs, many epochs; one β sweep shared by DPO and IPO
    converged_pairs_per_prompt: int = _option(8, "pairs per training prompt in the converged regime")
    converged_steps: int = _option(1000, "optimiser steps of each converged-regime run")
    converged_betas: tuple[float, ...] = _option(
        (0.1, 0.5, 1.0), "β sweep shared by DPO and IPO in the converged regime"
    )
    converged_eval_every: int = 250
    noisy_beta: float = 0.1
    noisy_methods: tuple[str, ...] = ("ipo", "ipo_soft")
    # evaluation
    eval_samples_per_prompt: int = 16

    def __post_init__(self):
        for name in (
            "sft_steps",
            "max_steps",
            "rl_steps",
            "reward_steps",
            "pairs_per_prompt",
            "eval_every",
            "batch_size",
            "converged_pairs_per_prompt",
            "converged_steps",
            "converged_eval_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.converged_pairs_per_prompt > self.pairs_per_prompt:
            raise ValueError(
                f"DemoConfig.converged_pairs_per_prompt={self.converged_pairs_per_prompt} must be <= "
                f"pairs_per_prompt={self.pairs_per_prompt} (the converged regime uses a subset of the pairs)"
            )
        for beta in (*self.dpo_betas, *self.ipo_betas, *self.rlhf_betas, *self.converged_betas, self.noisy_beta):
            if not beta > 0:
                raise ValueError(f"every β must be > 0, got {beta!r}")
        if not self.noisy_temperature > 0:
            raise ValueError(f"DemoConfig.noisy_temperature must be > 0, got {self.noisy_temperature!r}")
        if self.batch_size % self.rl_num_generations:
            raise ValueError(
                f"DemoConfig.batch_size={self.batch_size} must be a multiple of "
                f"rl_num_generations={self.rl_num_generations}"
            )
        if set(self.noisy_methods) - {"dpo", "ipo", "ipo_soft"}:
            raise ValueError(f"DemoConfig.noisy_methods must be among dpo, ipo, ipo_soft, got {self.noisy_methods!r}")

    def run_specs(self, regime: str):
        from ..lab.experiments.methods import RunSpec

        if regime == "budget":
            specs = [RunSpec("dpo", b) for b in self.dpo_betas] + [RunSpec("ipo", b) for b in self.ipo_betas]
            return specs + [RunSpec("rlhf", b) for b in self.rlhf_betas]
        specs = [RunSpec(m, b, "deterministic", "converged") for m in ("dpo", "ipo") for b in self.converged_betas]
        return specs + [RunSpec(m, self.noisy_beta, "noisy", "converged") for m in self.noisy_methods]

    def train_settings(self, regime: str):
        return settings_from(
            self,
            max_steps=self.max_steps if regime == "budget" else self.converged_steps,
            disable_tqdm=True,  # one progress bar per stage instead (see _Console)
        )


PRESETS: dict[str, dict] = {
    "default": {},
    # The whole pipeline in seconds (used by the test suite): every stage runs, on a toy budget.
    "quick": dict(
        hidden_size=32,
        sft_examples=64,
        sft_steps=4,
        sft_batch_size=16,
        pairs_per_prompt=1,
        num_eval_prompts=4,
        dpo_betas=(0.1,),
        ipo_betas=(0.1,),
        rlhf_betas=(0.1,),
        max_steps=4,
        batch_size=8,
        logging_steps=1,
        reward_steps=2,
        rl_steps=2,
        eval_every=2,
        converged_pairs_per_prompt=1,
        converged_steps=8,
        converged_betas=(0.1, 1.0),
        converged_eval_every=8,
        eval_samples_per_prompt=2,
        max_new_tokens=12,
        noisy_methods=("ipo", "ipo_soft"),
    ),
}

BUDGET_COLUMNS = [
    ("label", "run"),
    ("reward", "reward"),
    ("reward_stderr", "± s.e."),
    ("win_rate", "win rate vs π_ref"),
    ("kl", "KL(π‖π_ref)"),
    ("kl_stderr", "± s.e."),
    ("grammatical", "grammatical"),
    ("delta", "final Δ"),
    ("target", "IPO target t/β"),
    ("train_s", "train s"),
]
CONVERGED_COLUMNS = [
    ("label", "run"),
    ("delta", "Δ (last quarter)"),
    ("target", "IPO target t/β"),
    ("relative_error", "|Δ − t/β| / (t/β)"),
    ("trend", "Δ trend (last quarter)"),
    ("kl", "KL(π‖π_ref)"),
    ("kl_stderr", "± s.e."),
    ("reward", "reward"),
    ("reward_stderr", "± s.e."),
    ("grammatical", "grammatical"),
    ("train_s", "train s"),
]
KL_BETA_COLUMNS = [
    ("beta", "β"),
    ("kl_dpo", "KL DPO"),
    ("kl_dpo_stderr", "± s.e."),
    ("kl_ipo", "KL IPO"),
    ("kl_ipo_stderr", "± s.e."),
    ("ratio", "DPO / IPO"),
]
CLAIM_COLUMNS = [("number", "#"), ("statement", "claim"), ("numbers", "numbers"), ("verdict", "verdict")]
STAGES = 5


# ------------------------------------------------------------------------------------------------------- console
class _Console:
    """Stage lines and one progress bar per stage on the terminal; everything else into ``demo.log``.

    Inside :meth:`capture`, library output is sent to the log: ``sys.stdout``/``sys.stderr`` (prints, warnings,
    library progress bars), the handlers of the ``transformers``/``datasets`` loggers, and the library progress bars
    are switched off. Each change is undone on exit.
    """

    def __init__(self, log_path: Path, progress: bool):
        self.progress = progress
        self.terminal, self.terminal_err = sys.stdout, sys.stderr
        self.log = open(log_path, "w", buffering=1)

    def say(self, message: str) -> None:
        if self.progress:
            print(message, file=self.terminal, flush=True)
        print(message, file=self.log)

    def show(self, text: str) -> None:
        """Always on the terminal (the final tables), and in the log."""
        print(text, file=self.terminal, flush=True)
        print(text, file=self.log)

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            desc=desc,
            file=self.terminal_err,
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
            unit="step",
        )

    @contextlib.contextmanager
    def capture(self):
        import logging
        import warnings

        import datasets.utils.logging as datasets_logging
        import transformers.utils.logging as transformers_logging

        swapped = []
        terminals = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__, self.terminal, self.terminal_err)
        for name in ("transformers", "datasets", "trl", "accelerate"):
            for handler in logging.getLogger(name).handlers:
                if type(handler) is logging.StreamHandler and handler.stream in terminals:
                    swapped.append((handler, handler.setStream(self.log)))
        bars = [(m, m.is_progress_bar_enabled()) for m in (datasets_logging, transformers_logging)]
        for module, _ in bars:
            module.disable_progress_bar()
        try:
            with contextlib.redirect_stdout(self.log), contextlib.redirect_stderr(self.log), warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            for module, enabled in bars:
                if enabled:
                    module.enable_progress_bar()
            for handler, stream in swapped:
                handler.setStream(stream)

    def close(self) -> None:
        self.log.close()


def _step_bar_callback(bar):
    from transformers import TrainerCallback

    class StepBar(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            bar.update(1)

    return StepBar()


# ----------------------------------------------------------------------------------------------------------- run
def run_demo(config: DemoConfig) -> dict:
    """Run the whole pipeline; write ``report.md``, the PNGs, ``results.json`` and ``demo.log``; return the results."""
    import torch

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    console = _Console(out / "demo.log", config.progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with console.capture():
            results = _run_demo(config, out, console)
    finally:
        torch.set_num_threads(threads)
        console.close()
    return results


def _run_demo(config: DemoConfig, out: Path, console: _Console) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..lab.experiments.claims import evaluate_claims
    from ..lab.world import language
    from ..lab.world.evaluate import Evaluator
    from ..lab.world.preferences import build_preference_rows, label_statistics
    from ..lab.world.reward import PreferenceModel, best_response, max_reward

    started, cpu_started = time.time(), time.process_time()
    load_at_start = os.getloadavg()
    timings: dict[str, float] = {}

    # 1. π_ref
    console.say(
        f"[1/{STAGES}] π_ref: tiny Qwen2 (hidden {config.hidden_size}, {config.num_layers} layers), "
        f"SFT for {config.sft_steps} steps on the lab language"
    )
    t0 = time.time()
    train_prompts, eval_prompts = language.split_prompts(config.seed, config.num_eval_prompts)
    with console.bar(config.sft_steps, "SFT of π_ref") as bar:
        ref_dir = language.train_reference(
            out / "reference",
            train_prompts,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            num_examples=config.sft_examples,
            max_steps=config.sft_steps,
            batch_size=config.sft_batch_size,
            learning_rate=config.sft_learning_rate,
            seed=config.seed,
            disable_tqdm=True,
            report_to=config.report_to,
            callbacks=[_step_bar_callback(bar)],
        )
    timings["sft_s"] = time.time() - t0
    tokenizer = AutoTokenizer.from_pretrained(ref_dir)
    ref_model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()

    # 2. ground truth, preference pairs from μ = π_ref, and the reference points on held-out prompts
    console.say(
        f"[2/{STAGES}] preference pairs: {config.pairs_per_prompt} per prompt × {len(train_prompts)} prompts, "
        f"y₁, y₂ ~ π_ref; held-out evaluation of π_ref and the best-response oracle ({len(eval_prompts)} prompts)"
    )
    t0 = time.time()
    models = {
        "deterministic": PreferenceModel(0.0, config.seed),
        "noisy": PreferenceModel(config.noisy_temperature, config.seed),
    }
    rows = build_preference_rows(
        ref_model,
        tokenizer,
        train_prompts,
        config.pairs_per_prompt,
        models,
        config.max_new_tokens,
        config.seed,
        progress=config.progress,
        progress_file=console.terminal_err,
    )
    for name, regime_rows in rows.items():
        with open(out / f"pairs_{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in regime_rows)
    # Rows come prompt by prompt, pairs_per_prompt each: the converged regime keeps the first pairs of every prompt.
    small = {
        name: [r for i, r in enumerate(regime_rows) if i % config.pairs_per_prompt < config.converged_pairs_per_prompt]
        for name, regime_rows in rows.items()
    }
    data = {"budget": rows, "converged": small}
    label_stats = {name: label_statistics(r) for name, r in rows.items()}
    evaluators = {
        name: Evaluator(
            ref_model,
            tokenizer,
            eval_prompts,
            model,
            config.eval_samples_per_prompt,
            config.max_new_tokens,
            config.seed,
        )
        for name, model in models.items()
    }
    reference = evaluators["deterministic"].evaluate(ref_model)
    oracle = evaluators["deterministic"].evaluate_texts(lambda ps: [best_response(p, config.seed) for p in ps])
    oracle_reward = sum(max_reward(p, config.seed) for p in eval_prompts) / len(eval_prompts)
    timings["pairs_s"] = time.time() - t0

    # 3–4. the two regimes
    runs = []
    reward_model_log: list[dict] = []
    for stage, regime in ((3, "budget"), (4, "converged")):
        specs = config.run_specs(regime)
        pairs = len(data[regime]["deterministic"])
        steps = config.max_steps if regime == "budget" else config.converged_steps
        epochs = steps * config.batch_size / max(1, pairs)
        console.say(
            f"[{stage}/{STAGES}] {regime} regime: {len(specs)} runs on {pairs} pairs, {steps} steps of "
            f"{config.batch_size} pairs (≈ {epochs:.1f} epochs): " + ", ".join(s.label for s in specs)
        )
        t0 = time.time()
        regime_runs, log = _train_regime(config, regime, specs, ref_dir, data[regime], evaluators, out, console)
        runs += regime_runs
        reward_model_log = reward_model_log or log
        timings[f"{regime}_s"] = time.time() - t0

    # 5. claims and report
    console.say(f"[{STAGES}/{STAGES}] claims, report and plots")
    claims = evaluate_claims(runs, reference)
    wall_time, cpu_time = time.time() - started, time.process_time() - cpu_started
    load = os.getloadavg()
    reference_row = {**reference, "label": "π_ref (no training)", "delta": 0.0}
    oracle_row = {**oracle, "label": "best-response oracle", "kl": None, "kl_stderr": None}
    context = dict(
        config=config,
        train_prompts=train_prompts,
        eval_prompts=eval_prompts,
        label_stats=label_stats,
        wall_time=wall_time,
        cpu_time=cpu_time,
        load_at_start=load_at_start,
        load=load,
        pairs={k: len(v["deterministic"]) for k, v in data.items()},
    )
    with console.bar(1, "report") as bar:
        written = _write_report(out, runs, claims, reference_row, oracle_row, reference, oracle_reward, context)
        bar.update(1)
    results = {
        "config": dataclasses.asdict(config),
        "command": "trl-ipo demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
        "environment": _environment(config),
        "wall_time_s": wall_time,
        "cpu_time_s": cpu_time,
        "load_average_start": load_at_start,
        "load_average": load,
        "timings_s": timings,
        "claims": claims,
        "reward_model_log": reward_model_log,
        "prompts": {"train": train_prompts, "eval": eval_prompts},
        "label_statistics": label_stats,
        "reference": reference,
        "oracle": {**oracle, "max_reward": oracle_reward},
        "runs": runs,
        "files": {k: str(v) for k, v in written.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    console.show(_terminal_summary(runs, claims, reference_row, oracle_row, wall_time, load, written, out))
    return results


def _train_regime(config, regime, specs, ref_dir, rows, evaluators, out, console):
    """Train and evaluate the runs of one regime under one progress bar; returns (run records, reward-model log)."""
    from ..lab.experiments.claims import last_quarter_trend, margin_series
    from ..lab.experiments.methods import finish_wandb, train_preference_method, train_rlhf
    from ..lab.experiments.records import RunRecord
    from ..lab.experiments.report import logged_target
    from ..lab.world.evaluate import EvaluationCallback

    settings = config.train_settings(regime)
    every = config.eval_every if regime == "budget" else config.converged_eval_every
    total = sum(config.rl_steps if s.method == "rlhf" else settings.max_steps for s in specs)
    total += config.reward_steps if any(s.method == "rlhf" for s in specs) else 0
    runs, reward_model, reward_model_log = [], None, []
    with console.bar(total, f"{regime} regime") as bar:
        step_bar = _step_bar_callback(bar)
        for spec in specs:
            bar.set_postfix_str(spec.label)
            callback = EvaluationCallback(evaluators[spec.labels], every, spec.name)
            t0 = time.time()
            run_dir = out / "runs" / spec.name
            if spec.method == "rlhf":
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
                trainer = train_preference_method(
                    spec, ref_dir, rows[spec.labels], settings, run_dir, [callback, step_bar], config.report_to
                )
            train_s = time.time() - t0
            finish_wandb(config.report_to)
            log_history = trainer.state.log_history
            steps, deltas = margin_series(log_history, spec.beta)
            target = logged_target(log_history) if config.logp_reduction == "sum" else None
            trend = last_quarter_trend(steps, deltas) if regime == "converged" else None
            final = {
                **callback.history[-1],
                "label": spec.label,
                "delta": deltas[-1] if deltas else None,
                "target": target,
                "train_s": train_s,
            }
            if trend is not None:
                final.update(delta=trend["mean"], trend=trend["relative_change"])
                if target:
                    final["relative_error"] = abs(trend["mean"] - target) / abs(target)
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
                final=final,
            )
            runs.append(record.to_dict())
            del trainer
    return runs, reward_model_log


# -------------------------------------------------------------------------------------------------------- report
def _claim_numbers(claim: dict) -> str:
    """The evidence of a claim in a few words, for the claims table."""
    ev = claim["evidence"]
    cid = claim["id"]
    if cid == "ipo_margin_converges":
        return "; ".join(
            f"β={e['beta']:g}: Δ {e['delta']:.3g} vs {e['target']:.3g} ({e['relative_error']:.1%} off), "
            f"trend {e['trend']:+.1%}"
            for e in ev
        )
    if cid == "dpo_margin_grows":
        return "; ".join(
            f"β={e['beta']:g}: Δ {e['delta_end']:.3g} (IPO target {e['ipo_target']:.3g}), "
            f"trend {e['trend']:+.1%} ± {e['trend_stderr']:.1%}"
            for e in ev
        )
    if cid == "dpo_drift_not_controlled_by_beta":
        parts = [
            f"β={r['beta']:g}: KL DPO {r['kl_dpo']:.3g} ± {r['kl_dpo_stderr']:.2g}, IPO {r['kl_ipo']:.3g} ± "
            f"{r['kl_ipo_stderr']:.2g} (ratio {r['ratio']:.3g})"
            for r in ev["per_beta"]
        ]
        if "ipo_fall" in ev:
            parts.append(f"KL(β_min)/KL(β_max): IPO {ev['ipo_fall']:.3g}×, DPO {ev['dpo_fall']:.3g}×")
        return "; ".join(parts)
    if cid == "drift_buys_no_reward":
        return "; ".join(
            f"β={e['beta']:g}: reward DPO {e['reward_dpo']:.3f}, IPO {e['reward_ipo']:.3f} "
            f"(± {e['reward_stderr']:.2g}); grammatical DPO {e['grammatical_dpo']:.2f}, "
            f"IPO {e['grammatical_ipo']:.2f}"
            for e in ev
        )
    if cid == "budget_one_frontier":
        parts = [
            f"{e['run']}: KL {e['kl']:.3g}, reward {e['reward']:.3f}, off the line by {e['residual']:+.3f} "
            f"(2 s.e. {2 * (e['reward_stderr'] or 0):.3f})"
            for e in ev["runs"]
        ]
        if "slope" in ev:
            parts.insert(0, f"line: reward = {ev['intercept']:.3f} + {ev['slope']:.3f}·KL")
        parts += [
            f"{e['run']} left the language (grammatical {e['grammatical']:.2f}, KL {e['kl']:.3g})"
            for e in ev["left_the_language"]
        ]
        return "; ".join(parts)
    if cid == "soft_labels_drift_less":
        return "; ".join(
            f"β={e['beta']:g}: soft Δ {e['delta_soft']:.3g} vs target {e['target_soft']:.3g} "
            f"({e['relative_error_soft']:.1%} off), hard Δ {e['delta_hard']:.3g} vs "
            f"{e['target_hard']:.3g}; KL soft {e['kl_soft']:.3g} ± {e['kl_soft_stderr']:.2g}, hard "
            f"{e['kl_hard']:.3g} ± {e['kl_hard_stderr']:.2g}; reward soft {e['reward_soft']:.3f}, "
            f"hard {e['reward_hard']:.3f}"
            for e in ev
        )
    return json.dumps(ev, default=float)


def _claim_rows(claims: list[dict]) -> list[dict]:
    from ..lab.experiments.claims import verdict

    return [
        {
            "number": str(i),
            "statement": c["statement"],
            "numbers": _claim_numbers(c) or "no runs",
            "verdict": f"**{verdict(c['holds'])}**",
        }
        for i, c in enumerate(claims, 1)
    ]


def _write_report(out, runs, claims, reference_row, oracle_row, reference, oracle_reward, context) -> dict:
    from ..lab.experiments.claims import kl_against_beta
    from ..lab.experiments.report import (
        markdown_table,
        plot_frontier,
        plot_kl_vs_beta,
        plot_margins,
        plot_over_steps,
        write_markdown,
    )

    budget = [r for r in runs if r["regime"] == "budget"]
    converged = [r for r in runs if r["regime"] == "converged"]
    kl_rows = kl_against_beta(runs)
    plots = {
        "margins_log": (
            plot_margins(converged, out / "margins_log.png", log_scale=True),
            "Converged regime: margin Δ against step, log scale, each IPO target t/β as a line",
        ),
        "kl_vs_beta": (
            plot_kl_vs_beta(kl_rows, out / "kl_vs_beta.png"),
            "Converged regime: end KL(π‖π_ref) against β, DPO and IPO (± s.e.)",
        ),
        "kl_vs_step_converged": (
            plot_over_steps(converged, "kl", "KL(π ‖ π_ref) (nats)", out / "kl_vs_step_converged.png", "KL vs step"),
            "Converged regime: KL(π‖π_ref) against step",
        ),
        "frontier": (
            plot_frontier(budget, out / "frontier.png", reference, oracle_reward),
            "Budget regime: reward against KL",
        ),
        "kl_vs_step": (
            plot_over_steps(budget, "kl", "KL(π ‖ π_ref) (nats)", out / "kl_vs_step.png", "KL vs step"),
            "Budget regime: KL(π‖π_ref) against step",
        ),
        "margins_vs_step": (
            plot_margins(budget, out / "margins_vs_step.png"),
            "Budget regime: margin Δ against step (IPO targets as lines)",
        ),
        "reward_vs_step": (
            plot_over_steps(budget, "reward", "mean ground-truth reward", out / "reward_vs_step.png", "reward vs step"),
            "Budget regime: ground-truth reward against step",
        ),
    }
    lines = [
        "# trl-ipo demo: DPO over-fits deterministic preferences whatever β; IPO settles at its target",
        "",
        _intro(**context),
        "",
        "## Claims",
        "",
        "Each verdict is computed from the runs of this report by `trl_ipo.lab.experiments.claims` (thresholds there); "
        "`results.json` holds them under `claims` with every number.",
        "",
        markdown_table(_claim_rows(claims), CLAIM_COLUMNS),
        "",
        "## Converged regime",
        "",
        f"{context['pairs']['converged']} pairs (the first {context['config'].converged_pairs_per_prompt} of each "
        f"training prompt), {context['config'].converged_steps} steps. Δ is the mean summed log-ratio margin over the "
        "last quarter of training; its trend is the change of a least-squares line over that quarter, relative to Δ.",
        "",
        markdown_table([r["final"] for r in converged], CONVERGED_COLUMNS),
        "",
        "### KL against β (deterministic labels)",
        "",
        markdown_table(kl_rows, KL_BETA_COLUMNS),
        "",
        "## Budget regime",
        "",
        markdown_table([r["final"] for r in budget], BUDGET_COLUMNS),
        "",
        "## Reference points (held-out prompts, deterministic v)",
        "",
        markdown_table([reference_row, oracle_row], BUDGET_COLUMNS[:-1]),
        "",
    ]
    return write_markdown(out, lines, plots)


def _terminal_summary(runs, claims, reference_row, oracle_row, wall_time, load, written, out) -> str:
    from ..lab.experiments.claims import kl_against_beta, verdict
    from ..lab.experiments.report import text_table

    budget = [r["final"] for r in runs if r["regime"] == "budget"]
    converged = [r["final"] for r in runs if r["regime"] == "converged"]
    parts = [
        "",
        "Budget regime",
        text_table([reference_row, *budget, oracle_row], BUDGET_COLUMNS),
        "",
        "Converged regime",
        text_table(converged, CONVERGED_COLUMNS),
        "",
        "KL against β (converged, deterministic labels)",
        text_table(kl_against_beta(runs), KL_BETA_COLUMNS),
        "",
        "Claims",
    ]
    for i, claim in enumerate(claims, 1):
        parts.append(f"  {i}. [{verdict(claim['holds'])}] {claim['statement']}")
        parts.append(f"     {_claim_numbers(claim) or 'no runs'}")
    parts += [
        "",
        f"wall time {wall_time:.0f} s (1-minute load average {load[0]:.1f}); report: {written['report']}; "
        f"log: {out / 'demo.log'}",
    ]
    return "\n".join(parts)


def _environment(config) -> dict:
    """What a reproduction must match for the numbers to be identical (see docs/results.md)."""
    import datasets
    import tokenizers
    import torch
    import transformers
    import trl

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": config.threads,
    }


def _intro(config, train_prompts, eval_prompts, label_stats, wall_time, cpu_time, load_at_start, load, pairs) -> str:
    det, noisy = label_stats["deterministic"], label_stats["noisy"]
    return "\n".join(
        [
            f"π_ref: Qwen2 with hidden size {config.hidden_size}, {config.num_layers} layers, SFT for "
            f"{config.sft_steps} steps. Pairs: {det['pairs']} (both responses sampled from π_ref, "
            f"{config.pairs_per_prompt} per training prompt, {len(train_prompts)} training prompts); evaluation on "
            f"{len(eval_prompts)} held-out prompts × {config.eval_samples_per_prompt} samples.",
            "",
            f"Labels: deterministic v (chosen has the higher hidden reward in {det['agree']:.1%} of pairs, ties "
            f"{det['ties']:.1%}); noisy v with T = {config.noisy_temperature:g} (agreement {noisy['agree']:.1%}, "
            f"mean q {noisy['mean_q']:.3f}).",
            "",
            f"Budget regime: {pairs['budget']} pairs, {config.max_steps} optimiser steps of {config.batch_size} pairs "
            f"for DPO and IPO; RLHF: reward model {config.reward_steps} steps, RLOO {config.rl_steps} steps of "
            f"{config.batch_size} completions ({config.rl_num_generations} per prompt); evaluation every "
            f"{config.eval_every} steps. Converged regime: {pairs['converged']} pairs, {config.converged_steps} steps "
            f"of {config.batch_size} pairs; evaluation every {config.converged_eval_every} steps. Every preference "
            f"run: lr {config.learning_rate:g} (constant), summed log-probs (logp_reduction={config.logp_reduction}).",
            "",
            "Columns: reward = mean hidden reward of sampled responses (max is the oracle's); win rate = E v(y, y′) "
            "against π_ref's samples (½ = no better than π_ref); KL = mean of log π(y|x) − log π_ref(y|x) over "
            "y ~ π (nats per response); grammatical = fraction of samples in the language; Δ = summed log-ratio "
            "margin (chosen − rejected) on the training batches, rewards/margins / β from the trainer's logs.",
            "",
            f"Wall time {wall_time:.0f} s with {config.threads} torch thread(s), set-up excluded; CPU time (user + "
            f"system) {cpu_time:.0f} s; 1-minute load average {load_at_start[0]:.1f} at the start and {load[0]:.1f} "
            "at the end.",
        ]
    )


# ----------------------------------------------------------------------------------------------------------- CLI
# DemoConfig fields that are also flags of `trl-ipo demo` (in --help order), besides --output_dir and --report_to
CONFIG_FLAGS = (
    "seed",
    "threads",
    "max_steps",
    "rl_steps",
    "learning_rate",
    "pairs_per_prompt",
    "dpo_betas",
    "ipo_betas",
    "rlhf_betas",
    "converged_steps",
    "converged_pairs_per_prompt",
    "converged_betas",
)
_FLAG_TYPES = {"int": int, "float": float, "str": str}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--output_dir",
        default=DemoConfig.output_dir,
        help="where the report, plots, log and runs go (default %(default)s)",
    )
    p.add_argument(
        "--preset", choices=sorted(PRESETS), default="default", help="'quick' runs every stage on a toy budget"
    )
    p.add_argument("--report_to", default="none", help="'none' (default) or 'wandb' (one wandb run per training run)")
    fields = {f.name: f for f in dataclasses.fields(DemoConfig)}
    for name in CONFIG_FLAGS:  # type and help text from the DemoConfig field; unset flags keep the preset's value
        kind = str(fields[name].type)
        sweep = kind.startswith("tuple")
        p.add_argument(
            f"--{name}",
            type=float if sweep else _FLAG_TYPES[kind],
            nargs="+" if sweep else None,
            default=None,
            help=fields[name].metadata["help"],
        )
    p.add_argument("--no_noisy", action="store_true", help="skip the noisy-label runs")
    p.add_argument("--quiet", action="store_true", help="no stage lines or progress bars (the final tables remain)")
    return p


def config_from_args(argv: list[str]) -> DemoConfig:
    args = _parser().parse_args(argv)
    values = dict(PRESETS[args.preset])
    for name in ("output_dir", "report_to", *CONFIG_FLAGS):
        value = getattr(args, name)
        if value is not None:
            values[name] = tuple(value) if isinstance(value, list) else value
    if args.no_noisy:
        values["noisy_methods"] = ()
    if args.quiet:
        values["progress"] = False
    known = {f.name for f in dataclasses.fields(DemoConfig)}
    return DemoConfig(**{k: v for k, v in values.items() if k in known})


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ..errors import report

    try:
        config = config_from_args(argv)
    except ValueError as err:
        return report(PROG, err)
    if config.report_to == "wandb":
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            return report(PROG, "--report_to wandb needs the wandb package (pip install 'trl_ipo[wandb]').")
    run_demo(config)
    return 0
