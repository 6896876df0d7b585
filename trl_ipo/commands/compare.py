"""`trl-ipo compare`: DPO vs IPO (and soft-label IPO) on your own model and preference data.

Each method starts from ``--model`` (a local folder or a hub id), trains on the same training split for the same
number of steps, and is evaluated on a held-out split:

* preference accuracy: fraction of held-out pairs with Δ > 0, Δ = log-ratio(chosen) − log-ratio(rejected) (summed
  log-probs, TRL's ``eval_rewards/accuracies``);
* mean Δ (summed; TRL's ``eval_rewards/margins`` / β) and, for IPO, the regressed margin and its target t/β
  (``eval_ipo/delta``, ``eval_ipo/target``, in the units of ``--logp_reduction``);
* KL(π‖π_ref) on held-out prompts: mean of log π(y|x) − log π_ref(y|x) over responses sampled from π, at the start,
  every ``--eval_every`` steps and at the end.

The dataset may be any TRL preference format — standard (prompt, chosen, rejected), implicit prompt (chosen,
rejected) or conversational — from a local JSONL/JSON/Parquet/CSV file or the hub. Everything about the input is
checked (file, columns, empty rows, preference column, split sizes, model) before any training starts.
Writes ``report.md``, PNG plots and ``results.json`` to ``--output_dir`` and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from ..cli import ArgumentParser, command_summary, require_at_least, require_positive_real
from ..datasets_io import check_writable_folder
from ..errors import InputError, run_parsed
from ..metric_keys import DELTA, TARGET

HELP = command_summary("compare")
PROG = "trl-ipo compare"

_REDUCTION_NOTE = {
    "mean": "per-token mean log-ratios, the default of `trl-ipo train` and IPOConfig",
    "sum": "summed log-ratios; `trl-ipo train` and IPOConfig default to the per-token mean, so the same β there "
    "sets a different target",
}
METHODS = ("dpo", "ipo", "ipo_soft")
SUMMARY_COLUMNS = [
    ("label", "method"),
    ("accuracy", "held-out accuracy (Δ>0)"),
    ("delta", "mean Δ (sum)"),
    ("ipo_delta", "IPO regressed Δ"),
    ("target", "IPO target t/β"),
    ("kl", "KL(π‖π_ref)"),
    ("kl_stderr", "± s.e."),
    ("train_s", "train s"),
]


# ----------------------------------------------------------------------------------------------------- input checks
def prepare_inputs(args):
    """Load and check everything; returns (train split, held-out split) or raises :class:`InputError`.

    The data and the model go through the loader of ``trl-ipo train`` (:mod:`trl_ipo.datasets_io`).
    """
    from ..datasets_io import check_model, check_preference_columns, load_preference_dataset, select_split

    if not args.methods:
        raise InputError("--methods is empty; choose from " + ", ".join(METHODS))
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise InputError(f"--methods {unknown}: unknown; choose from {list(METHODS)}.")
    if "ipo_soft" in args.methods and not args.preference_column:
        raise InputError("--methods ipo_soft needs --preference_column (the column holding q in [0, 1]).")
    require_positive_real("--beta", args.beta)
    for flag in (
        "batch_size",
        "max_steps",
        "logging_steps",
        "max_length",
        "kl_prompts",
        "kl_samples",
        "max_new_tokens",
    ):
        require_at_least(f"--{flag}", getattr(args, flag), 1)
    for flag in ("eval_every", "threads"):
        require_at_least(f"--{flag}", getattr(args, flag), 0)
    if not (math.isfinite(args.learning_rate) and args.learning_rate >= 0):
        raise InputError(f"--learning_rate must be a finite number >= 0, got {args.learning_rate!r}")
    if not 0 < args.eval_fraction < 1:
        raise InputError(f"--eval_fraction must be in (0, 1), got {args.eval_fraction}.")
    check_model(args.model, flag="--model")
    data = load_preference_dataset(args.dataset, args.dataset_config)
    column = args.preference_column
    if args.eval_split:
        train = select_split(data, args.split, args.dataset)
        held_out = select_split(data, args.eval_split, args.dataset, purpose="evaluation")
    else:
        data = select_split(data, args.split, args.dataset)
        check_preference_columns(data, f"split {args.split!r}", column)
        n_eval = int(len(data) * args.eval_fraction)
        if n_eval < 1 or len(data) - n_eval < 1:
            raise InputError(
                f"splitting {len(data)} rows with --eval_fraction {args.eval_fraction} leaves an empty "
                f"{'held-out' if n_eval < 1 else 'training'} split; raise --eval_fraction or add rows."
            )
        parts = data.train_test_split(test_size=n_eval, seed=args.seed)
        train, held_out = parts["train"], parts["test"]
    check_preference_columns(train, "training", column)
    check_preference_columns(held_out, "held-out", column)
    check_writable_folder(args.output_dir, "--output_dir")
    return train, held_out


def held_out_prompts(dataset, tokenizer, limit: int) -> list[str]:
    """Distinct prompt texts of the held-out pairs (implicit prompts extracted, chat templates applied)."""
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt

    prompts: list[str] = []
    for row in dataset:
        row = maybe_extract_prompt(dict(row))
        text = maybe_apply_chat_template({"prompt": row["prompt"]}, tokenizer)["prompt"]
        if text not in prompts:
            prompts.append(text)
        if len(prompts) >= limit:
            break
    return prompts


# ----------------------------------------------------------------------------------------------------------- runs
def _train(method: str, args, train, held_out, callback):
    import warnings

    from ..data import UnusedPreferenceColumnWarning
    from ..lab.experiments.methods import train_on_pairs, trainer_args

    fields = trainer_args(
        Path(args.output_dir) / "runs" / method,
        f"compare-{method}",
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        logging_steps=args.logging_steps,
        seed=args.seed,
        report_to=args.report_to,
        use_cpu=args.use_cpu,
        disable_tqdm=args.quiet,
        max_steps=args.max_steps,
        per_device_eval_batch_size=args.batch_size,
        max_length=args.max_length,
    )
    with warnings.catch_warnings():
        if args.preference_column:  # the hard-label methods leave the named column aside on purpose
            warnings.simplefilter("ignore", UnusedPreferenceColumnWarning)
        return _train_and_evaluate(method, args, train, held_out, callback, train_on_pairs, fields)


def _train_and_evaluate(method, args, train, held_out, callback, train_on_pairs, fields):
    trainer = train_on_pairs(
        method,
        args.model,
        train,
        fields,
        beta=args.beta,
        logp_reduction=args.logp_reduction,
        seed=args.seed,
        preference_column=args.preference_column,
        eval_dataset=held_out,
        callbacks=[callback],
    )
    return trainer, trainer.evaluate()


def run_compare(args) -> dict:
    """Train and evaluate the methods of ``args``; torch's thread count is given back afterwards."""
    import torch

    threads = torch.get_num_threads()
    try:
        return _run_compare(args)
    finally:
        torch.set_num_threads(threads)


def _run_compare(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..lab.experiments.methods import METHOD_LABELS, finish_wandb
    from ..lab.experiments.records import RunRecord
    from ..lab.experiments.report import logged_target, text_table, write_report
    from ..lab.world.evaluate import EvaluationCallback, Evaluator

    started = time.time()
    train, held_out = prepare_inputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    ref_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, trust_remote_code=False).eval()
    prompts = held_out_prompts(held_out, tokenizer, args.kl_prompts)
    evaluator = Evaluator(ref_model, tokenizer, prompts, None, args.kl_samples, args.max_new_tokens, args.seed)
    every = args.eval_every or args.max_steps

    runs = []
    for method in args.methods:
        print(f"training {METHOD_LABELS[method]} (β={args.beta:g}) for {args.max_steps} steps on {len(train)} pairs")
        callback = EvaluationCallback(evaluator, every, method)
        t0 = time.time()
        trainer, metrics = _train(method, args, train, held_out, callback)
        finish_wandb(args.report_to)
        train_s = time.time() - t0
        final = {
            "label": METHOD_LABELS[method],
            "accuracy": metrics.get("eval_rewards/accuracies"),
            "delta": metrics["eval_rewards/margins"] / args.beta if "eval_rewards/margins" in metrics else None,
            "ipo_delta": metrics.get(f"eval_{DELTA}"),
            "target": metrics.get(f"eval_{TARGET}"),
            "kl": callback.history[-1]["kl"],
            "kl_stderr": callback.history[-1]["kl_stderr"],
            "train_s": train_s,
        }
        runs.append(
            RunRecord(
                name=method,
                label=METHOD_LABELS[method],
                method=method,
                beta=args.beta,
                labels="held-out",
                target=logged_target(trainer.state.log_history) if args.logp_reduction == "sum" else None,
                history=callback.history,
                log_history=trainer.state.log_history,
                eval_metrics=metrics,
                final=final,
            )
        )
        del trainer
    intro = (
        f"Model `{args.model}`, dataset `{args.dataset}`: {len(train)} training pairs, {len(held_out)} held-out pairs; "
        f"{args.max_steps} steps of {args.batch_size} pairs per method, β = {args.beta:g}, lr {args.learning_rate:g}, "
        f"IPO logp_reduction={args.logp_reduction} ({_REDUCTION_NOTE[args.logp_reduction]}). "
        f"KL on {len(prompts)} held-out prompts × {args.kl_samples} samples. "
        "Δ > 0 means the policy moved its log-ratio toward the chosen response."
    )
    written = write_report(out, "trl-ipo compare: DPO vs IPO", intro, runs, SUMMARY_COLUMNS)
    results = {
        "args": vars(args),
        "wall_time_s": time.time() - started,
        "train_rows": len(train),
        "held_out_rows": len(held_out),
        "kl_prompts": prompts,
        "runs": [r.to_dict() for r in runs],
        "files": {k: str(v) for k, v in written.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print("\n" + text_table([r.final for r in runs], SUMMARY_COLUMNS) + f"\n\nreport: {written['report']}")
    return results


def _parser() -> ArgumentParser:
    # Usage errors and repeated flags: one line, exit status 2.
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="local model folder or hub id (also the reference policy)")
    p.add_argument(
        "--dataset",
        required=True,
        help="local .jsonl/.json/.parquet/.csv file, a local dataset folder, or a hub dataset name (as trl-ipo train)",
    )
    p.add_argument("--dataset_config", default=None, help="hub dataset configuration name")
    p.add_argument(
        "--split", default="train", help="training split (a single local file is 'train'; default %(default)s)"
    )
    p.add_argument(
        "--eval_split", default=None, help="held-out split of the dataset; default: --eval_fraction of --split"
    )
    p.add_argument(
        "--eval_fraction", type=float, default=0.1, help="held-out fraction when no --eval_split (default %(default)s)"
    )
    p.add_argument(
        "--methods", nargs="+", default=["dpo", "ipo"], help=f"any of {', '.join(METHODS)} (default: dpo ipo)"
    )
    p.add_argument("--preference_column", default=None, help="column holding q in [0, 1] (needed by ipo_soft)")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument(
        "--logp_reduction",
        choices=["sum", "mean"],
        default="mean",
        help="IPO's Δ: per-token mean (default, as in `trl-ipo train` and IPOConfig) or summed log-probs. The same β "
        "means a different target under each (see docs/choosing-beta.md)",
    )
    p.add_argument("--max_steps", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=5e-6)
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--kl_prompts", type=int, default=16, help="held-out prompts for the KL estimate")
    p.add_argument("--kl_samples", type=int, default=4, help="sampled responses per prompt for the KL estimate")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--eval_every", type=int, default=0, help="KL every N steps (default: only at start and end)")
    p.add_argument("--output_dir", default="outputs/compare")
    p.add_argument("--report_to", default="none", help="'none' or 'wandb'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--use_cpu", action="store_true", help="train on CPU even if an accelerator is present")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str]) -> int:
    """Returns 0 on success, 2 on bad input (one line on stderr, nothing trained or written)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return run_parsed(PROG, _parser(), argv, lambda args: run_compare(args) and 0)
