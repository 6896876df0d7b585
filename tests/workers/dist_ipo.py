"""One rank of a launched IPO run, driven by a JSON spec; writes what it saw to ``<out>/rank<R>.json``.

    deepspeed --num_gpus 2 tests/workers/dist_ipo.py spec.json      (ZeRO-3 when spec["args"] has "deepspeed")
    torchrun --nproc_per_node 2 tests/workers/dist_ipo.py spec.json (plain DDP)
    python tests/workers/dist_ipo.py spec.json                      (one process)

Spec keys: ``model`` (a local model folder), ``data`` (JSONL rows), ``out`` (folder), ``args`` (IPOConfig kwargs),
optional ``resume`` ({"checkpoint": name, "args": overrides}: train again from that checkpoint in this process),
optional ``die`` ({"rank": r, "step": s}: that rank exits with code 17 at the end of step s).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(key, value)

DIE_EXIT_CODE = 17


def main(spec_path: str) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from trl_ipo import IPOConfig, IPOTrainer
    from trl_ipo.distributed import parameter_shards

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])  # rank<R>.json at the end; rank<R>-init.json once the trainer is built
    rows = [json.loads(line) for line in Path(spec["data"]).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])

    class DieAtStep(TrainerCallback):
        def __init__(self, rank, step):
            self.rank, self.step = rank, step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step and args.process_index == self.rank:
                sys.stdout.flush()
                os._exit(DIE_EXIT_CODE)

    def run(config_kwargs, resume=None):
        torch.manual_seed(0)
        args = IPOConfig(**config_kwargs)
        trainer = IPOTrainer(
            model=spec["model"], args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
        out.mkdir(parents=True, exist_ok=True)
        (out / f"rank{trainer.accelerator.process_index}-init.json").write_text(json.dumps(_zero3_sizes(trainer)))
        if spec.get("die"):
            trainer.add_callback(DieAtStep(spec["die"]["rank"], spec["die"]["step"]))
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    trainer = run(spec["args"])
    rank = trainer.accelerator.process_index
    history = trainer.state.log_history
    record = {
        "rank": rank,
        "env_world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "losses": [h["loss"] for h in history if "loss" in h],
        "ipo_targets": [h["ipo/target"] for h in history if "ipo/target" in h],
        "collective_timeout_s": _collective_timeout_s(),
        "policy_persistence_threshold": _persistence_threshold(trainer.model_wrapped),
        "policy": parameter_shards(trainer.model_wrapped),
        "reference": parameter_shards(trainer.ref_model) if trainer.ref_model is not None else None,
    }
    if spec.get("resume"):
        resume = spec["resume"]
        checkpoint = str(Path(spec["args"]["output_dir"]) / resume["checkpoint"])
        resumed = run({**spec["args"], **resume.get("args", {})}, resume=checkpoint)
        record["resumed_losses"] = [h["loss"] for h in resumed.state.log_history if "loss" in h]
        record["resumed_steps"] = [h["step"] for h in resumed.state.log_history if "loss" in h]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))


def _zero3_sizes(trainer):
    """The ZeRO-3 config the trainer holds and the reference engine's persistence threshold, before training."""
    plugin = trainer.accelerator.state.deepspeed_plugin
    zero = plugin.deepspeed_config.get("zero_optimization", {}) if plugin is not None else {}
    return {"zero_optimization": zero, "reference_persistence_threshold": _persistence_threshold(trainer.ref_model)}


def _persistence_threshold(engine):
    """A DeepSpeed engine's stage-3 persistence threshold (None for a plain module)."""
    return engine.zero_param_persistence_threshold() if hasattr(engine, "zero_param_persistence_threshold") else None


def _collective_timeout_s():
    """Timeout of the default process group's gloo backend, in seconds (None when not distributed)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return None
    backend = dist.group.WORLD._get_backend(torch.device("cpu"))
    return backend.options._timeout.total_seconds()


if __name__ == "__main__":
    # The deepspeed launcher appends --local_rank=N; the spec path is the first plain argument.
    main(next(arg for arg in sys.argv[1:] if not arg.startswith("--")))
