"""One rank of a launched TR-IPO run (``sync_ref_model=True``) for tests/test_sync_ref_model.py.

    torchrun --standalone --nproc_per_node 2 tests/workers/sync_ref_ipo.py spec.json

Spec keys: ``model`` (a local model folder), ``rows`` (preference rows), ``out`` (folder), ``args`` (IPOConfig
kwargs, with a ZeRO-3 ``deepspeed`` config). Each rank writes ``rank<R>.json`` (its step losses and whether the
reference is partitioned); rank 0 also writes the gathered policy and reference weights after training as
``model.safetensors`` and ``ref_model.safetensors``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(key, value)


def gathered_weights(module) -> dict:
    """Every parameter of a ZeRO-3 partitioned module, gathered in full (a copy on CPU), by name."""
    import deepspeed

    named = list(module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in named]):
        return {name: p.detach().cpu().clone().contiguous() for name, p in named}


def main(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from trl_ipo import IPOConfig, IPOTrainer
    from trl_ipo.distributed import parameter_shards

    spec = json.loads(Path(spec_path).read_text())
    torch.manual_seed(0)
    trainer = IPOTrainer(
        model=spec["model"],
        args=IPOConfig(**spec["args"]),
        train_dataset=Dataset.from_list(spec["rows"]),
        processing_class=AutoTokenizer.from_pretrained(spec["model"]),
    )
    reference = parameter_shards(trainer.ref_model)
    trainer.train()
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        "model": gathered_weights(trainer.model),
        "ref_model": gathered_weights(getattr(trainer.ref_model, "module", trainer.ref_model)),
    }
    rank = trainer.accelerator.process_index
    if rank == 0:
        for name, tensors in weights.items():
            save_file(tensors, str(out / f"{name}.safetensors"))
    record = {
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "reference_partitioned": reference["num_partitioned"] == reference["num_params"] > 0,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1])
