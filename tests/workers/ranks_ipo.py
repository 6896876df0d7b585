"""One rank of a launched IPO run with precomputed reference log-probs, then a resume after a simulated crash.

    deepspeed --num_gpus 2 tests/workers/ranks_ipo.py spec.json   (ZeRO-3 when spec["args"] has "deepspeed", else DDP)

Spec keys: ``model`` (a local model folder), ``data`` (JSONL rows, loaded in memory), ``out`` (folder for
``rank<R>.json``), ``args`` (IPOConfig kwargs; checkpoints every step), ``crashed_dir`` (where the crash is staged).

1. Train with ``precompute_ref_log_probs`` on an in-memory dataset; record the reference columns and the losses.
2. Rank 0 stages a crashed copy of the output folder: checkpoints 1–2 whole, checkpoint-3 as a rank that died while
   saving leaves it (its RNG state missing, no completion marker), nothing after.
3. Every rank resumes in the crashed folder with ``resume_from_checkpoint=True`` and trains to the end.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(key, value)


def main(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_ipo import IPOConfig, IPOTrainer
    from trl_ipo.checkpoints import MARKER

    spec = json.loads(Path(spec_path).read_text())
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])

    def build(**overrides):
        torch.manual_seed(0)
        args = IPOConfig(**{**spec["args"], **overrides})
        return IPOTrainer(
            model=spec["model"], args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )

    def losses(trainer):
        return {int(h["step"]): h["loss"] for h in trainer.state.log_history if "loss" in h}

    trainer = build()
    record = {
        "rank": trainer.accelerator.process_index,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "ref_chosen_logps": list(trainer.train_dataset["ref_chosen_logps"]),
        "ref_rejected_logps": list(trainer.train_dataset["ref_rejected_logps"]),
    }
    trainer.train()
    record["losses"] = losses(trainer)

    run, crashed = Path(spec["args"]["output_dir"]), Path(spec["crashed_dir"])
    if trainer.accelerator.is_main_process:
        for step in (1, 2, 3):
            shutil.copytree(run / f"checkpoint-{step}", crashed / f"checkpoint-{step}")
        (crashed / "checkpoint-3" / MARKER).unlink()
        (crashed / "checkpoint-3" / "rng_state_1.pth").unlink()
    trainer.accelerator.wait_for_everyone()

    resumed = build(output_dir=str(crashed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.train(resume_from_checkpoint=True)
    record["resumed_from"] = resumed.resumed_from
    record["resumed_losses"] = losses(resumed)
    record["warnings"] = [str(w.message) for w in caught if "checkpoint" in str(w.message)]
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    # The deepspeed launcher appends --local_rank=N; the spec path is the first plain argument.
    main(next(arg for arg in sys.argv[1:] if not arg.startswith("--")))
