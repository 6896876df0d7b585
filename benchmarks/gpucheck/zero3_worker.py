"""One rank of the ZeRO-3 check, started by the DeepSpeed launcher (``deepspeed --num_gpus 1 … spec.json``).

For each run of the spec, trains IPOTrainer with the packaged ZeRO-3 config and writes, per run, the logged losses
and how the policy and the reference are held: engine type, ZeRO stage, and per-parameter ZeRO-3 attributes
(``ds_numel``, ``ds_shape``, the local partition ``ds_tensor`` and whether the full tensor is released).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(_key, _value)


def zero3_evidence(engine) -> dict:
    """How ``engine``'s parameters are held on this rank: ZeRO-3 parameters keep only ``ds_tensor`` (their
    partition) between forwards; ``numel()`` of a released parameter is 0 while ``ds_numel`` is its full size."""
    module = getattr(engine, "module", engine)
    params = list(module.named_parameters())
    zero = [(n, p) for n, p in params if hasattr(p, "ds_numel")]
    released = [(n, p) for n, p in zero if p.ds_status.name == "NOT_AVAILABLE" and p.numel() == 0]
    name, largest = max(zero, key=lambda item: item[1].ds_numel) if zero else ("", None)
    threshold = (
        engine.zero_param_persistence_threshold() if hasattr(engine, "zero_param_persistence_threshold") else None
    )
    return {
        "engine": type(engine).__name__,
        "zero_stage": engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else None,
        "persistence_threshold": threshold,
        "num_params": len(params),
        "num_zero3_params": len(zero),
        "num_released": len(released),
        "ds_numel": sum(p.ds_numel for _, p in zero),
        "local_partition_numel": sum(p.ds_tensor.numel() for _, p in zero),
        "materialised_numel": sum(p.numel() for _, p in params),
        "kept_whole": sorted({n.split(".")[-1] for n, p in zero if (n, p) not in released}),
        "largest": None
        if largest is None
        else {
            "name": name,
            "ds_shape": list(largest.ds_shape),
            "ds_numel": largest.ds_numel,
            "numel": largest.numel(),
            "ds_status": largest.ds_status.name,
        },
    }


def main(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_ipo import IPOConfig, IPOTrainer

    spec = json.loads(Path(spec_path).read_text())
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    records = {}
    for name, args in spec["runs"].items():
        torch.manual_seed(0)
        trainer = IPOTrainer(
            model=spec["model"],
            args=IPOConfig(**args),
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
        trainer.train()
        records[name] = {
            "num_processes": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "policy": zero3_evidence(trainer.model_wrapped),
            "reference": zero3_evidence(trainer.ref_model),
        }
        rank = trainer.accelerator.process_index
        del trainer
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    # The launcher appends --local_rank=N; the spec path is the first plain argument.
    main(next(arg for arg in sys.argv[1:] if not arg.startswith("--")))
