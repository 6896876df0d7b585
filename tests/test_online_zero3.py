"""OnlineIPOTrainer (IPO-MD sampling) under DeepSpeed ZeRO-3 on 2 CPU ranks, replayed in one process.

The launched run samples pairs from the token-level mixture with a sharded reference (the policy gathered for
generation on every rank), then takes one SGD step. The test replays that step in a single process on the pairs the
ranks sampled and checks that the loss and the updated parameters are the same.

The test forks the two ranks from its own process (no second import of the libraries). Run as a script, this file
is the worker of one launched rank: ``torchrun --nproc_per_node 2 tests/test_online_zero3.py MODEL_DIR OUT_DIR``.
"""

import importlib
import json
import math
import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch
from launch import free_port, torchrun_two_ranks

from trl_ipo import _compat

PROMPTS = ["the cat sat", "a dog ran on a mat", "big red sun", "the moon"]
LEARNING_RATE = 0.05


pytestmark = [pytest.mark.usefixtures("one_torch_thread", "restore_global_rng"), pytest.mark.slow]


def soft_length_judge(prompts, completions_a, completions_b):
    return [1 / (1 + math.exp(-(len(a) - len(b)) / 8)) for a, b in zip(completions_a, completions_b, strict=True)]


def config_kwargs(output_dir, **overrides):
    base = dict(
        output_dir=str(output_dir),
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        learning_rate=LEARNING_RATE,
        optim="sgd",
        lr_scheduler_type="constant",
        max_steps=1,
        logging_steps=1,
        max_grad_norm=0.0,
        beta=0.1,
        max_new_tokens=4,
        mixture_coef=0.5,
        dataloader_pin_memory=False,
    )
    base.update(overrides)
    return base


def worker(model_dir: str, out: str) -> None:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from trl_ipo.distributed import parameter_shards
    from trl_ipo.online import OnlineIPOConfig, OnlineIPOTrainer

    class RecordingTrainer(OnlineIPOTrainer):
        """Keeps the pairs each rank sampled (unpadded token lists)."""

        recorded = []

        def _generate(self, model, prompts, images=None):
            result = super()._generate(model, prompts, images)
            prompt_ids, prompt_mask, completion_ids, completion_mask = result[:4]
            rows = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask, strict=True)]
            for i, prompt in enumerate(prompts):
                self.recorded.append(
                    {
                        "prompt": prompt,
                        "a": rows[i],
                        "b": rows[i + len(prompts)],
                    }
                )
            return result

    args = OnlineIPOConfig(
        **config_kwargs(
            Path(out) / "run",
            deepspeed="zero3",
            per_device_train_batch_size=2,
            model_init_kwargs={"dtype": "float32", "device_map": None},
        )
    )
    trainer = RecordingTrainer(
        model=model_dir,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        judge=soft_length_judge,
    )
    shards = {"policy": parameter_shards(trainer.model_wrapped), "reference": parameter_shards(trainer.ref_model)}
    trainer.train()
    trainer.save_model(str(Path(out) / "model"))
    record = {
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "shards": shards,
        "pairs": trainer.recorded,
        "log": trainer.state.log_history[0],
    }
    Path(out, f"rank{trainer.accelerator.process_index}.json").write_text(json.dumps(record))


def _launched_rank(rank: int, world_size: int, port: int, model_dir: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    worker(model_dir, out)


def _launch_two_ranks(model_dir: str, out) -> None:
    """Fork the two ranks from this process (the libraries are already imported) with a launcher's environment;
    if this process already holds a process group, launch them afresh with torchrun instead."""
    importlib.import_module("deepspeed")  # imported once here rather than in each rank

    if torch.distributed.is_initialized():
        proc = torchrun_two_ranks(__file__, model_dir, out, timeout=400)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        return
    port = free_port()
    context = multiprocessing.get_context("fork")
    ranks = [context.Process(target=_launched_rank, args=(r, 2, port, model_dir, str(out))) for r in (0, 1)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=400)
    for process in ranks:
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in ranks] == [0, 0], "a rank failed; its traceback is in the captured stderr"


def test_zero3_two_cpu_ranks_match_a_single_process_step(tiny_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ipo.online import OnlineIPOConfig, OnlineIPOTrainer

    _launch_two_ranks(tiny_dir, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Really two DeepSpeed ranks, with policy and reference partitioned.
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert all("DEEPSPEED" in r["distributed_type"] for r in ranks)
    for r in ranks:
        for model in ("policy", "reference"):
            shards = r["shards"][model]
            assert shards["num_partitioned"] == shards["num_params"] > 0, (model, shards)
            assert shards["local_numel"] < shards["full_numel"]
    pairs = {p["prompt"]: p for r in ranks for p in r["pairs"]}
    assert sorted(pairs) == sorted(PROMPTS)  # each rank sampled its half of the prompts
    assert all(len(p["a"]) > 0 and len(p["b"]) > 0 for p in pairs.values())
    # The ranks draw from their own random streams (same seed everywhere would give the same draws).
    assert [p["a"] for p in ranks[0]["pairs"]] != [p["a"] for p in ranks[1]["pairs"]]

    # Replay: one process, all four sampled pairs in one batch, the same SGD step.
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)

    class Replay(OnlineIPOTrainer):
        def _generate(self, model, prompts, images=None):
            enc = tokenizer(
                text=list(prompts), return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
            )
            rows = [pairs[p]["a"] for p in prompts] + [pairs[p]["b"] for p in prompts]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, r in enumerate(rows):
                ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
            four = enc["input_ids"].repeat(2, 1), enc["attention_mask"].repeat(2, 1), ids, mask
            return (*four, None)[: _compat.online_generate_outputs()]  # as many as this TRL's _generate returns

    from datasets import Dataset

    torch.manual_seed(0)
    replay = Replay(
        model=AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32),
        args=OnlineIPOConfig(**config_kwargs(tmp_path / "replay", per_device_train_batch_size=4, use_cpu=True)),
        train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS]),
        processing_class=tokenizer,
        judge=soft_length_judge,
    )
    replay.train()
    log = replay.state.log_history[0]
    for key in ("loss", "ipo/sq_error", "ipo/target", "online/preference_mean"):
        assert ranks[0]["log"][key] == pytest.approx(log[key], rel=1e-4, abs=1e-6), key

    initial = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).state_dict()
    sharded = load_file(str(tmp_path / "model" / "model.safetensors"))
    moved = 0
    for name, param in replay.model.state_dict().items():
        torch.testing.assert_close(sharded[name], param, rtol=1e-4, atol=1e-6, msg=name)
        moved += int(not torch.equal(param, initial[name]))
    assert moved > 0  # the step did move the policy


if __name__ == "__main__":
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
        os.environ.setdefault(key, value)
    worker(sys.argv[1], sys.argv[2])
