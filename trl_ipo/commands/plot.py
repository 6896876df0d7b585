"""``trl-ipo plot RUN_DIR [RUN_DIR ...] --out DIR``: PNG plots of margins, targets and losses from trainer_state.json.

Several runs go on the same figures (DPO vs IPO, β sweeps). The Python entry point is :func:`plot`, i.e.
:func:`trl_ipo.plotting.plot_runs`. Each PNG has a train and an eval panel:

    margin.png           Δ (ipo/delta) and its target (ipo/target)
    residual.png         ipo/residual = mean(Δ − target)
    loss.png             loss / eval_loss
    reward_accuracy.png  rewards/accuracies
    logratios.png        chosen / rejected log-ratios (rewards / β)
"""

from __future__ import annotations

import sys

from ..cli import ArgumentParser, command_summary
from ..errors import run_parsed
from ..plotting import PANELS, PlotResult, check_plot_beta, plot_runs

HELP = command_summary("plot")


def plot(run_dirs, out_dir, labels=None, betas=None, panels=None) -> PlotResult:
    """Python form of ``trl-ipo plot``: render the PNGs of ``run_dirs`` into ``out_dir``."""
    return plot_runs(list(run_dirs), out_dir, labels=labels, betas=betas, panels=panels)


def build_parser() -> ArgumentParser:
    panels = ", ".join(p.filename for p in PANELS)
    parser = ArgumentParser(
        prog="trl-ipo plot",
        description=f"{HELP}. Writes {panels} into --out, every run on the same figures.",
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        help="a run's output_dir (or a checkpoint folder, or a trainer_state.json file)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created if missing)")
    parser.add_argument("--label", action="append", metavar="NAME", help="legend name of a run, once per run, in order")
    parser.add_argument(
        "--beta",
        action="append",
        type=float,
        metavar="B",
        help="β of a run for the log-ratio panel (finite, > 0), once per run or once for all (default: the β recorded "
        "in the training_args.json next to the state file read)",
    )
    parser.add_argument(
        "--panel",
        action="append",
        metavar="NAME",
        help="draw only this panel (margin, residual, loss, reward_accuracy, logratios); repeatable; default: all",
    )
    return parser


def main(argv: list[str]) -> int:
    """0 when PNGs were written, 1 when the runs have none of the plotted metrics, 2 (one line) on bad input."""
    return run_parsed("trl-ipo plot", build_parser(), argv, _run)


def _run(ns) -> int:
    betas = [check_plot_beta(b, f"--beta {b!r}") for b in ns.beta] if ns.beta is not None else None
    if betas is not None and len(betas) == 1 and len(ns.run_dirs) > 1:
        betas = betas * len(ns.run_dirs)
    result = plot(ns.run_dirs, ns.out, labels=ns.label, betas=betas, panels=ns.panel)
    for note in result.skipped:
        print(f"note: {note}", file=sys.stderr)
    if not result.files:
        print("trl-ipo plot: the runs have none of the plotted metrics; no PNG written.", file=sys.stderr)
        return 1
    for path in result.files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
