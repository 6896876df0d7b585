"""One rank of a launched IPO run for the packed-layout test; writes its log history to ``<out>/rank<R>.json``.

    deepspeed --num_gpus 2 tests/workers/packed_ipo.py spec.json

Spec keys: ``model`` (a local model folder), ``data`` (JSONL rows), ``out`` (folder), ``args`` (IPOConfig kwargs).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(key, value)


def main(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_ipo import IPOConfig, IPOTrainer
    from trl_ipo.distributed import parameter_shards

    spec = json.loads(Path(spec_path).read_text())
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    torch.manual_seed(0)
    trainer = IPOTrainer(
        model=spec["model"],
        args=IPOConfig(**spec["args"]),
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(spec["model"]),
    )
    trainer.train()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "history": trainer.state.log_history,
        "policy": parameter_shards(trainer.model_wrapped),
        "packed_calls": trainer.packed.forward_calls,  # policy and reference forwards
        "layouts_built": trainer.packed.layouts_built,
    }
    (out / f"rank{trainer.accelerator.process_index}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    # The deepspeed launcher appends --local_rank=N; the spec path is the first plain argument.
    main(next(arg for arg in sys.argv[1:] if not arg.startswith("--")))
