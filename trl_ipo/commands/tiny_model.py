"""`trl-ipo tiny-model OUT_DIR`: a tiny random Qwen2 model and its tokenizer, built locally (no network), in OUT_DIR.

OUT_DIR then works wherever a model path or hub id does (``--model_name_or_path``, ``IPOTrainer(model=...)``,
``AutoTokenizer.from_pretrained``). With ``--pairs N`` it also writes N synthetic preference rows (``prompt``,
``chosen``, ``rejected`` and a soft label ``q``) to ``--dataset`` (default OUT_DIR/pairs.jsonl), so a command line
can be tried end to end in seconds, e.g.::

    trl-ipo tiny-model /tmp/tiny --pairs 32
    trl-ipo train --model_name_or_path /tmp/tiny --dataset_name /tmp/tiny/pairs.jsonl --output_dir /tmp/tiny-ipo \\
        --max_steps 2 --per_device_train_batch_size 4 --report_to none
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ..cli import ArgumentParser, command_summary, require_at_least
from ..errors import InputError, run_parsed

HELP = command_summary("tiny-model")
PROG = "trl-ipo tiny-model"
# Files whose presence means a folder already holds a model or tokenizer (not overwritten without --overwrite).
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "tokenizer.json",
)


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="folder for the model and tokenizer (created)")
    p.add_argument("--hidden_size", type=int, default=32, help="hidden size (default %(default)s)")
    p.add_argument("--num_layers", type=int, default=2, help="decoder layers (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default %(default)s)")
    p.add_argument("--pairs", type=int, default=0, help="also write this many synthetic preference rows (default 0)")
    p.add_argument("--dataset", default=None, help="where the rows go (default OUT_DIR/pairs.jsonl)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model of an OUT_DIR that already holds one (default: refuse)",
    )
    return p


def check_args(args) -> None:
    """Every flag, and OUT_DIR, before anything is written; errors name the flag and the value."""
    if args.hidden_size <= 0 or args.hidden_size % 4:
        raise InputError(f"--hidden_size must be a positive multiple of 4, got {args.hidden_size}")
    require_at_least("--num_layers", args.num_layers, 1)
    require_at_least("--pairs", args.pairs, 0)
    out = Path(args.out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"OUT_DIR {args.out_dir!r} is an existing file, not a folder")
    held = [name for name in MODEL_FILES if (out / name).exists()]
    if held and not args.overwrite:
        raise InputError(
            f"OUT_DIR {args.out_dir!r} already holds a model ({', '.join(held)}); pass --overwrite to replace it, or "
            "choose another folder"
        )
    if args.dataset is not None and Path(args.dataset).expanduser().is_dir():
        raise InputError(f"--dataset {args.dataset!r} is a folder; give the path of a .jsonl file")


def main(argv: list[str]) -> int:
    """0 on success; 2 (one line on stderr, nothing written) on bad input."""
    return run_parsed(PROG, _parser(), argv, _run)


def _run(args) -> int:
    check_args(args)
    from ..lab.tiny import build_tiny_model_folder, make_pairs

    out = build_tiny_model_folder(args.out_dir, args.hidden_size, args.num_layers, args.seed)
    print(f"model and tokenizer: {out}")
    if args.pairs > 0:
        dataset = Path(args.dataset or out / "pairs.jsonl")
        dataset.parent.mkdir(parents=True, exist_ok=True)
        rows = make_pairs(args.pairs, seed=args.seed + 1)
        q_rng = random.Random(args.seed + 1000)  # a separate stream: the rows are make_pairs' rows, q added
        for row in rows:
            row["q"] = round(q_rng.random(), 3)
        dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{len(rows)} preference rows (prompt, chosen, rejected, q): {dataset}")
    return 0
