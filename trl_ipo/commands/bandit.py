"""``trl-ipo bandit``: the IPO paper's bandit experiment (Azar et al. 2023 §5.4, Figure 1), exact and by gradient.

Defaults reproduce the paper's setting: actions a, b, c; dataset D1 = {a ≻ b, b ≻ c, a ≻ c}; uniform reference;
τ ∈ {0.1, 0.5, 1, 2, 10}; softmax policy trained by Adam (learning rate 0.01) on batches of 9 pairs drawn with
replacement, 18,000 steps, 10 seeds; IPO and DPO. Writes into --out:

    bandit_table.md      final action probabilities, mean ± 95% CI over seeds, plus the exact IPO policy (L⁺b)
    bandit_results.json  the same numbers and the setting
    bandit_curves.png    learning curves, one panel per τ

The math lives in :mod:`trl_ipo.lab.theory.finite` (closed form) and :mod:`trl_ipo.lab.theory.bandit` (training,
rendering).
"""

from __future__ import annotations

import argparse
import sys
import time

from ..cli import command_summary

HELP = command_summary("bandit")


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{what} is empty")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trl-ipo bandit",
        description=f"{HELP}. Defaults: the paper's Figure 1 setting (D1, uniform reference, 10 seeds).",
    )
    parser.add_argument("--out", default="bandit", metavar="DIR", help="output folder (default: ./bandit)")
    parser.add_argument("--steps", type=int, default=18_000, help="Adam steps per run (default 18000)")
    parser.add_argument("--seeds", type=int, default=10, help="number of seeds, 0..N-1 (default 10)")
    parser.add_argument(
        "--taus",
        type=lambda t: _floats(t, "--taus"),
        default=[0.1, 0.5, 1.0, 2.0, 10.0],
        help="comma-separated τ (= β) values (default 0.1,0.5,1,2,10)",
    )
    parser.add_argument("--batch-size", type=int, default=9, help="pairs per step, drawn with replacement (default 9)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate (default 0.01)")
    parser.add_argument(
        "--pairs",
        default="a>b,b>c,a>c",
        help="dataset as comma-separated 'winner>loser' pairs; repeat a pair for multiplicity (default D1)",
    )
    parser.add_argument(
        "--preference",
        type=lambda t: _floats(t, "--preference"),
        default=None,
        help="soft label q per pair, comma-separated, in the order of --pairs (default: hard labels, q = 1)",
    )
    parser.add_argument(
        "--reference",
        type=lambda t: _floats(t, "--reference"),
        default=None,
        help="reference probabilities per action, in order of first appearance in --pairs (default uniform)",
    )
    parser.add_argument(
        "--no-symmetric",
        dest="symmetric",
        action="store_false",
        help="regress onto q/τ instead of the symmetric target (q − ½)/τ (IPOConfig.symmetric=False)",
    )
    parser.add_argument("--methods", default="ipo,dpo", help="comma-separated subset of ipo,dpo (default both)")
    parser.add_argument("--record-every", type=int, default=100, help="steps between learning-curve points")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    import torch

    from ..lab.theory.bandit import parse_pairs, render_table, run_bandit, write_outputs

    try:
        actions, pairs = parse_pairs(args.pairs)
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        if args.preference is not None and len(args.preference) != len(pairs):
            raise ValueError(f"--preference has {len(args.preference)} values but --pairs has {len(pairs)} pairs")
        if args.reference is not None and len(args.reference) != len(actions):
            raise ValueError(
                f"--reference has {len(args.reference)} values but --pairs names {len(actions)} actions {actions}"
            )
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: threads only add overhead
        started = time.perf_counter()
        try:
            result = run_bandit(
                pairs=pairs,
                actions=actions,
                reference=args.reference,
                taus=args.taus,
                seeds=tuple(range(args.seeds)),
                methods=methods,
                preference=args.preference,
                symmetric=args.symmetric,
                steps=args.steps,
                batch_size=args.batch_size,
                lr=args.lr,
                record_every=args.record_every,
            )
        finally:
            torch.set_num_threads(threads)
    except ValueError as err:
        print(f"trl-ipo bandit: {err}", file=sys.stderr)
        return 2
    result.meta["command"] = "trl-ipo bandit " + " ".join(argv)
    result.meta["train_seconds"] = round(time.perf_counter() - started, 2)
    paths = write_outputs(result, args.out, plot=args.plot)
    print(render_table(result))
    print()
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
