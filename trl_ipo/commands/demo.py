"""`trl-ipo demo`: RLHF vs DPO vs IPO on a synthetic task whose ground truth is known (no network, CPU, minutes).

The claim under test (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", §4.2 and §5): with deterministic preferences on a finite data set, DPO's margins grow without bound
whatever β, so β does not hold the policy near π_ref, while IPO's margins settle at 1/(2β).

Pipeline (each stage's numbers come from the runs; none is written in advance):

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
5. Claims computed from the runs, each with a verdict (:mod:`trl_ipo.lab.experiments.claims`) and its evidence in
   words (:mod:`trl_ipo.lab.experiments.claim_text`); ``report.md``, PNG plots and ``results.json`` in
   ``--output_dir``; the tables on the terminal (:mod:`trl_ipo.lab.experiments.demo_report`).

Held-out measurements (:mod:`trl_ipo.lab.world.evaluate`): reward, win rate vs π_ref under v, KL(π‖π_ref), grammatical
share, over training steps. Library output (warnings, per-dataset bars, weight-loading reports) goes to ``demo.log``
in the output folder; the terminal shows the stages, one progress bar per stage and the final tables.

This module is the command line only: the settings are :mod:`trl_ipo.lab.experiments.demo_config`, the stages
:mod:`trl_ipo.lab.experiments.demo_pipeline` (with the wall and CPU time of each in ``results.json`` under ``timings``),
the report and the terminal summary :mod:`trl_ipo.lab.experiments.demo_report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from ..cli import command_summary
from ..lab.experiments.demo_config import PRESETS, DemoConfig
from ..lab.experiments.demo_pipeline import run_demo

__all__ = ["CONFIG_FLAGS", "PRESETS", "DemoConfig", "config_from_args", "main", "run_demo"]

HELP = command_summary("demo")
PROG = "trl-ipo demo"


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
