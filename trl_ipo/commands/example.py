"""`trl-ipo example`: a short IPO run on the bundled example dataset with a tiny model built locally (no network).

The dataset (``trl_ipo/examples/number_sequences.jsonl``) holds number-sequence continuations with annotator votes;
q = wins / (wins + losses) becomes the soft-label preference column. The run prints the margin Δ that IPO regresses
against its target (Δ → t/β), and writes the model, ``trainer_state.json`` and ``summary.json`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib import resources
from pathlib import Path

from ..cli import ArgumentParser, command_summary, require_at_least, require_positive_real
from ..errors import InputError, run_parsed
from ..metric_keys import DELTA, RESIDUAL, TARGET

HELP = command_summary("example")
PROG = "trl-ipo example"


def example_dataset_path() -> Path:
    return Path(str(resources.files("trl_ipo") / "examples" / "number_sequences.jsonl"))


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/example", help="where the model, state and summary go")
    p.add_argument("--max_steps", type=int, default=60, help="optimizer steps (default 60)")
    p.add_argument("--beta", type=float, default=0.1, help="IPO regularisation β (the paper's τ)")
    p.add_argument("--hard_labels", action="store_true", help="ignore the votes: q = 1 for every pair")
    p.add_argument("--report_to", default="none", help="'none' or 'wandb'")
    p.add_argument("--seed", type=int, default=0)
    return p


def check_args(args) -> None:
    """Every flag before anything is loaded or written; errors name the flag and the value."""
    require_at_least("--max_steps", args.max_steps, 1)
    require_positive_real("--beta", args.beta)
    if args.report_to not in ("none", "wandb"):
        raise InputError(f"--report_to must be 'none' or 'wandb', got {args.report_to!r}")
    out = Path(args.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir {args.output_dir!r} is an existing file, not a folder")


def main(argv: list[str]) -> int:
    """0 on success; 2 (one line on stderr) on bad input."""
    return run_parsed(PROG, _parser(), argv, _run)


def _run(args) -> int:
    check_args(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    from datasets import load_dataset

    from trl_ipo import IPOConfig, IPOTrainer, add_preference_from_votes
    from trl_ipo.lab.tiny import build_model, build_tokenizer

    started = time.time()
    out = Path(args.output_dir)
    data = load_dataset("json", data_files=str(example_dataset_path()), split="train")
    data = add_preference_from_votes(data, "wins", "losses", output_column="preference")
    split = data.train_test_split(test_size=16, seed=args.seed)

    texts = [r["prompt"] + r["chosen"] + r["rejected"] for r in data]
    tokenizer = build_tokenizer(texts, vocab_size=300)
    model = build_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=args.seed)

    config = IPOConfig(
        output_dir=str(out),
        beta=args.beta,
        preference_column=None if args.hard_labels else "preference",
        learning_rate=5e-3,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        eval_strategy="steps",
        eval_steps=max(1, args.max_steps // 4),
        logging_steps=max(1, args.max_steps // 12),
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=args.report_to,
        seed=args.seed,
    )
    trainer = IPOTrainer(
        model=model, args=config, train_dataset=split["train"], eval_dataset=split["test"], processing_class=tokenizer
    )
    trainer.train()
    final = trainer.evaluate()
    trainer.save_model(str(out))
    trainer.state.save_to_json(str(out / "trainer_state.json"))

    rows = [h for h in trainer.state.log_history if DELTA in h]
    print(f"\n{'step':>5} {'loss':>9} {'Δ (margin)':>11} {'target t/β':>11} {'residual':>9}")
    for h in rows:
        print(
            f"{h['step']:>5} {h['loss']:>9.4f} {h['ipo/delta']:>11.4f} {h['ipo/target']:>11.4f} {h['ipo/residual']:>9.4f}"
        )
    summary = {
        "steps": trainer.state.global_step,
        "beta": args.beta,
        "soft_labels": not args.hard_labels,
        "first_train_loss": rows[0]["loss"] if rows else None,
        "final_train_loss": rows[-1]["loss"] if rows else None,
        "eval_loss": final["eval_loss"],
        "eval_ipo_delta": final[f"eval_{DELTA}"],
        "eval_ipo_target": final[f"eval_{TARGET}"],
        "eval_ipo_residual": final[f"eval_{RESIDUAL}"],
        "dropped_rows": trainer.dropped_rows,
        "wall_seconds": round(time.time() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"\neval: Δ = {summary['eval_ipo_delta']:.4f} vs target {summary['eval_ipo_target']:.4f} "
        f"(loss {summary['eval_loss']:.4f}); model and summary in {out}/ ({summary['wall_seconds']} s)"
    )
    return 0
