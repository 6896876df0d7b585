"""Per-rank bytes of the policy and the reference (and the optimiser state) under ZeRO-3, at any world size.

Build a tiny local model once, then launch at world size 1 and 2 and compare (expect ≈ 1/N per rank):

    python scripts/shard_memory.py --build /tmp/shard-model
    deepspeed --num_gpus 1 scripts/shard_memory.py --model /tmp/shard-model --out /tmp/shard-1.json
    deepspeed --num_gpus 2 scripts/shard_memory.py --model /tmp/shard-model --out /tmp/shard-2.json

On a host without GPUs ``--num_gpus N`` starts N CPU ranks (gloo). Each launch trains one ZeRO-3 step twice: with
the reference model, and with ``precompute_ref_log_probs=True`` (no reference model kept during training). Rank 0
prints a table and writes every rank's numbers to ``--out``. The stage-3 persistence threshold is 0 so every tensor
is partitioned, as the large tensors of a real model are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(_key, _value)


def build(path: str, hidden_size: int, num_layers: int) -> None:
    from trl_ipo.lab.tiny import build_tiny_checkpoint, make_pairs

    texts = [" ".join(row.values()) for row in make_pairs(300, seed=123)]
    build_tiny_checkpoint(path, texts, hidden_size=hidden_size, num_layers=num_layers, num_heads=4)
    # File-backed pairs: with precompute_ref_log_probs the ranks share the dataset's cache folder, which an in-memory
    # dataset (a per-process temporary folder) would not give them.
    from datasets import Dataset

    Dataset.from_list(make_pairs(16)).save_to_disk(os.path.join(path, "pairs"))
    print(f"tiny model and pairs written to {path}")


def optimizer_state_bytes(engine) -> int:
    """Bytes of the optimiser's own tensors on this rank: fp32 partitions plus Adam moments (ZeRO-3 shards both)."""
    import torch

    optimizer = getattr(engine, "optimizer", None)
    total = 0
    for tensor in getattr(optimizer, "fp32_partitioned_groups_flat", []) or []:
        total += tensor.numel() * tensor.element_size()
    inner = getattr(optimizer, "optimizer", optimizer)
    for state in getattr(inner, "state", {}).values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                total += value.numel() * value.element_size()
    return total


def measure(model_path: str, precompute: bool, workdir: str) -> dict:
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from trl_ipo import IPOConfig, IPOTrainer
    from trl_ipo.distributed import parameter_shards, resolve_config

    ds_config = json.loads(Path(resolve_config("zero3")).read_text())
    ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    args = IPOConfig(
        output_dir=os.path.join(workdir, f"run-precompute-{precompute}"),
        deepspeed=ds_config,
        precompute_ref_log_probs=precompute,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=2,
        max_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
    )
    trainer = IPOTrainer(
        model=model_path,
        args=args,
        train_dataset=load_from_disk(os.path.join(model_path, "pairs")),
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )
    trainer.train()
    policy = parameter_shards(trainer.model_wrapped)
    reference = parameter_shards(trainer.ref_model) if trainer.ref_model is not None else None
    return {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "precompute_ref_log_probs": precompute,
        "policy_bytes": policy["local_bytes"],
        "policy_full_bytes": policy["full_bytes"],
        "reference_bytes": reference["local_bytes"] if reference else 0,
        "reference_full_bytes": reference["full_bytes"] if reference else 0,
        "optimizer_state_bytes": optimizer_state_bytes(trainer.model_wrapped),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", metavar="DIR", help="write the tiny model to DIR and exit (run once, unlaunched)")
    parser.add_argument("--model", help="local model folder to measure")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--out", help="JSON file for every rank's numbers (written by rank 0)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # from the deepspeed launcher
    ns = parser.parse_args(argv)
    if ns.build:
        build(ns.build, ns.hidden_size, ns.num_layers)
        return 0
    if not ns.model:
        parser.error("--model (or --build) is required")

    import torch.distributed as dist

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for precompute in (False, True):
            mine = measure(ns.model, precompute, workdir)
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
            rows.extend(sorted(gathered, key=lambda row: row["rank"]))
    if dist.get_rank() == 0:
        header = (
            f"{'world':>5} {'rank':>4} {'precompute':>10} {'policy B':>10} {'reference B':>11} {'optimizer B':>11} "
            f"{'full model B':>12}"
        )
        print(header)
        for row in rows:
            print(
                f"{row['world_size']:>5} {row['rank']:>4} {str(row['precompute_ref_log_probs']):>10} "
                f"{row['policy_bytes']:>10} {row['reference_bytes']:>11} {row['optimizer_state_bytes']:>11} "
                f"{row['policy_full_bytes']:>12}"
            )
        if ns.out:
            Path(ns.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
