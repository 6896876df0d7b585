"""What `trl-ipo demo` shows: ``report.md`` with its plots, and the summary on the terminal.

Everything here reads the results record the pipeline writes to ``results.json``
(:func:`trl_ipo.lab.experiments.demo_pipeline.run_demo`), so a report can be drawn again from a saved run. The claims'
evidence is put into words by :mod:`trl_ipo.lab.experiments.claim_text`.
"""

from __future__ import annotations

from pathlib import Path

from .claim_text import CLAIM_COLUMNS, claim_lines, claim_rows
from .claims import kl_against_beta
from .report import markdown_table, text_table

__all__ = [
    "BUDGET_COLUMNS",
    "CONVERGED_COLUMNS",
    "KL_BETA_COLUMNS",
    "TIMING_COLUMNS",
    "draw_plots",
    "intro",
    "reference_rows",
    "terminal_summary",
    "timing_rows",
    "write_demo_report",
]

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
TIMING_COLUMNS = [("stage", "stage"), ("wall_s", "wall s"), ("cpu_s", "CPU s (user + system)")]


def reference_rows(results: dict) -> tuple[dict, dict]:
    """The π_ref and best-response oracle rows of the budget table."""
    reference = {**results["reference"], "label": "π_ref (no training)", "delta": 0.0}
    oracle = {**results["oracle"], "label": "best-response oracle", "kl": None, "kl_stderr": None}
    return reference, oracle


def timing_rows(timings: dict) -> list[dict]:
    """One row per stage of ``results["timings"]`` (``total`` last), seconds rounded to 0.1."""
    return [
        {"stage": name, "wall_s": f"{t['wall_s']:.1f}", "cpu_s": f"{t['cpu_s']:.1f}"} for name, t in timings.items()
    ]


def _regime(results: dict, regime: str) -> list[dict]:
    return [r for r in results["runs"] if r["regime"] == regime]


def draw_plots(results: dict, out: Path) -> dict:
    """Draw the PNG plots into ``out``; returns ``{name: (path or None, caption)}`` for :func:`write_demo_report`."""
    from .report import plot_frontier, plot_kl_vs_beta, plot_margins, plot_over_steps

    budget, converged = _regime(results, "budget"), _regime(results, "converged")
    kl = "KL(π ‖ π_ref) (nats)"
    return {
        "margins_log": (
            plot_margins(converged, out / "margins_log.png", log_scale=True),
            "Converged regime: margin Δ against step, log scale, each IPO target t/β as a line",
        ),
        "kl_vs_beta": (
            plot_kl_vs_beta(kl_against_beta(results["runs"]), out / "kl_vs_beta.png"),
            "Converged regime: end KL(π‖π_ref) against β, DPO and IPO (± s.e.)",
        ),
        "kl_vs_step_converged": (
            plot_over_steps(converged, "kl", kl, out / "kl_vs_step_converged.png", "KL vs step"),
            "Converged regime: KL(π‖π_ref) against step",
        ),
        "frontier": (
            plot_frontier(budget, out / "frontier.png", results["reference"], results["oracle"]["max_reward"]),
            "Budget regime: reward against KL",
        ),
        "kl_vs_step": (
            plot_over_steps(budget, "kl", kl, out / "kl_vs_step.png", "KL vs step"),
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


def write_demo_report(out: Path, results: dict, plots: dict) -> dict:
    """Write ``report.md`` into ``out``, showing the ``plots`` of :func:`draw_plots`; returns ``{name: path}`` of
    the files written (the plots' and ``"report"``)."""
    from .report import write_markdown

    config = results["config"]
    lines = [
        "# trl-ipo demo: DPO over-fits deterministic preferences whatever β; IPO settles at its target",
        "",
        intro(results),
        "",
        "## Claims",
        "",
        "Each verdict is computed from the runs of this report by `trl_ipo.lab.experiments.claims` (thresholds there); "
        "`results.json` holds them under `claims` with every number.",
        "",
        markdown_table(claim_rows(results["claims"]), CLAIM_COLUMNS),
        "",
        "## Converged regime",
        "",
        f"{results['pairs']['converged']} pairs (the first {config['converged_pairs_per_prompt']} of each "
        f"training prompt), {config['converged_steps']} steps. Δ is the mean summed log-ratio margin over the "
        "last quarter of training; its trend is the change of a least-squares line over that quarter, relative to Δ.",
        "",
        markdown_table([r["final"] for r in _regime(results, "converged")], CONVERGED_COLUMNS),
        "",
        "### KL against β (deterministic labels)",
        "",
        markdown_table(kl_against_beta(results["runs"]), KL_BETA_COLUMNS),
        "",
        "## Budget regime",
        "",
        markdown_table([r["final"] for r in _regime(results, "budget")], BUDGET_COLUMNS),
        "",
        "## Reference points (held-out prompts, deterministic v)",
        "",
        markdown_table(list(reference_rows(results)), BUDGET_COLUMNS[:-1]),
        "",
        "## Time per stage",
        "",
        "Each second is counted once: evaluation inside a training run is charged to `evaluation`, not to the run's "
        "stage. `results.json` holds these under `timings`.",
        "",
        markdown_table(timing_rows(results["timings"]), TIMING_COLUMNS),
        "",
    ]
    return write_markdown(out, lines, plots)


def terminal_summary(results: dict, written: dict, out: Path) -> str:
    """The tables and claims printed at the end of the run."""
    reference, oracle = reference_rows(results)
    budget = [r["final"] for r in _regime(results, "budget")]
    converged = [r["final"] for r in _regime(results, "converged")]
    load = results["load_average"]
    parts = [
        "",
        "Budget regime",
        text_table([reference, *budget, oracle], BUDGET_COLUMNS),
        "",
        "Converged regime",
        text_table(converged, CONVERGED_COLUMNS),
        "",
        "KL against β (converged, deterministic labels)",
        text_table(kl_against_beta(results["runs"]), KL_BETA_COLUMNS),
        "",
        "Claims",
        *claim_lines(results["claims"]),
        "",
        f"wall time {results['wall_time_s']:.0f} s, CPU time {results['cpu_time_s']:.0f} s (1-minute load average "
        f"{load[0]:.1f}); report: {written['report']}; log: {out / 'demo.log'}",
    ]
    return "\n".join(parts)


def intro(results: dict) -> str:
    """The report's opening paragraphs: π_ref, the pairs and labels, both regimes' budgets, the columns, the time."""
    config = results["config"]
    det, noisy = results["label_statistics"]["deterministic"], results["label_statistics"]["noisy"]
    train_prompts, eval_prompts = results["prompts"]["train"], results["prompts"]["eval"]
    pairs = results["pairs"]
    return "\n".join(
        [
            f"π_ref: Qwen2 with hidden size {config['hidden_size']}, {config['num_layers']} layers, SFT for "
            f"{config['sft_steps']} steps. Pairs: {det['pairs']} (both responses sampled from π_ref, "
            f"{config['pairs_per_prompt']} per training prompt, {len(train_prompts)} training prompts); evaluation "
            f"on {len(eval_prompts)} held-out prompts × {config['eval_samples_per_prompt']} samples.",
            "",
            f"Labels: deterministic v (chosen has the higher hidden reward in {det['agree']:.1%} of pairs, ties "
            f"{det['ties']:.1%}); noisy v with T = {config['noisy_temperature']:g} (agreement {noisy['agree']:.1%}, "
            f"mean q {noisy['mean_q']:.3f}).",
            "",
            f"Budget regime: {pairs['budget']} pairs, {config['max_steps']} optimiser steps of "
            f"{config['batch_size']} pairs for DPO and IPO; RLHF: reward model {config['reward_steps']} steps, RLOO "
            f"{config['rl_steps']} steps of {config['batch_size']} completions ({config['rl_num_generations']} per "
            f"prompt); evaluation every {config['eval_every']} steps. Converged regime: {pairs['converged']} pairs, "
            f"{config['converged_steps']} steps of {config['batch_size']} pairs; evaluation every "
            f"{config['converged_eval_every']} steps. Every preference run: lr {config['learning_rate']:g} "
            f"(constant), summed log-probs (logp_reduction={config['logp_reduction']}).",
            "",
            "Columns: reward = mean hidden reward of sampled responses (max is the oracle's); win rate = E v(y, y′) "
            "against π_ref's samples (½ = no better than π_ref); KL = mean of log π(y|x) − log π_ref(y|x) over "
            "y ~ π (nats per response); grammatical = fraction of samples in the language; Δ = summed log-ratio "
            "margin (chosen − rejected) on the training batches, rewards/margins / β from the trainer's logs.",
            "",
            f"Wall time {results['wall_time_s']:.0f} s with {config['threads']} torch thread(s), set-up excluded; "
            f"CPU time (user + system) {results['cpu_time_s']:.0f} s; 1-minute load average "
            f"{results['load_average_start'][0]:.1f} at the start and {results['load_average'][0]:.1f} at the end.",
        ]
    )
