"""One rank of a launched IPO run with report_to="wandb" (offline); writes what it saw to ``<out>/rank<R>.json``.

    torchrun --standalone --nproc_per_node 2 tests/workers/wandb_two_ranks.py MODEL_DIR OUT_DIR

Every row has its own preference q, so the rows a rank trained on can be told apart. Each rank records the q of
the rows its own collator batched (its local share of the data), the gathered per-pair records behind each log
(``IPOTrainer.pairs_behind_log``), and whether it holds a wandb run. WANDB_DIR must point at a shared folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

ROWS, EVAL_ROWS, BATCH, STEPS, BETA = 16, 5, 2, 2, 0.1


def rows(n=ROWS, offset=0):
    words = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "red", "blue", "green"]
    return [
        {
            "prompt": f"{words[(i + offset) % 12]} {words[(3 * i) % 12]}",
            "chosen": f" {words[(i + 1) % 12]} {words[(5 * i + offset) % 12]}",
            "rejected": f" {words[(i + 7) % 12]}",
            "q": round((i + 0.5 + offset / 10) / n, 4),
        }
        for i in range(n)
    ]


def main(model_dir: str, out_dir: str) -> None:
    import torch
    import wandb
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from trl_ipo import IPOConfig, IPOTrainer

    out = Path(out_dir)
    torch.manual_seed(0)
    args = IPOConfig(
        output_dir=str(out / "trainer"),
        report_to="wandb",
        run_name="two-ranks",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,  # 5 eval rows on 2 ranks: the last batch is padded with copies
        eval_strategy="steps",
        eval_steps=STEPS,
        max_steps=STEPS,
        logging_steps=1,
        save_strategy="no",
        learning_rate=1e-3,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        beta=BETA,
        preference_column="q",
    )
    trainer = IPOTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list(rows()),
        eval_dataset=Dataset.from_list(rows(EVAL_ROWS, offset=3)),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )

    local_q: list[float] = []  # the training rows this rank's own dataloader batched, in order
    collate = trainer.data_collator

    train_q = {row["q"] for row in rows()}  # disjoint from the eval rows' q

    def recording_collate(features):
        local_q.extend(float(f["q"]) for f in features if float(f["q"]) in train_q)
        return collate(features)

    trainer.data_collator = recording_collate
    logged: list[dict] = []

    class Spy(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            mode = "train" if trainer.model.training else "eval"
            pairs = trainer.pairs_behind_log(mode)
            if pairs:
                logged.append({"mode": mode, "step": state.global_step, **{k: v.tolist() for k, v in pairs.items()}})

    trainer.add_callback(Spy())
    trainer.train()

    report = {
        "rank": trainer.accelerator.process_index,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "local_batches": len(trainer.get_train_dataloader()),
        "local_q": local_q,
        "logged": logged,
        "log_history": trainer.state.log_history,
        "has_wandb_run": wandb.run is not None,
        "wandb_run_dir": str(Path(wandb.run.dir).parent) if wandb.run is not None else None,
        "eval_rows": rows(EVAL_ROWS, offset=3),
    }
    if wandb.run is not None:
        wandb.finish()
    (out / f"rank{report['rank']}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
