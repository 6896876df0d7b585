"""Precomputed reference log-probs and resume after a crash, on two CPU ranks (DDP and ZeRO-3).

Two jobs start together under the ``deepspeed`` launcher (module fixture), each running ``tests/workers/ranks_ipo.py``
on 2 ranks: ``ddp`` (no DeepSpeed config: CPU DDP over gloo) and ``zero3`` (ZeRO-3, every tensor sharded). Both train
4 steps with ``precompute_ref_log_probs=True`` on an in-memory dataset (TRL 1.16 alone stops there with
``FileNotFoundError`` on rank 1), soft labels, a checkpoint every step, then resume a crashed copy of the run.
Meanwhile this process trains the same run in one process. The reference pass uses batches of 3 per rank (6 rows per
step for 16 rows), so its last batch is uneven and the rows the sampler repeats must be dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import cpu_args, make_pairs
from launch import REPO, Job, deepspeed_two_ranks, launch_env, tiny_zero3_config

WORKER = REPO / "tests" / "workers" / "ranks_ipo.py"
ROWS, GLOBAL_BATCH, STEPS = 16, 4, 4


def _args(output_dir, **overrides):
    base = dict(
        per_device_train_batch_size=GLOBAL_BATCH // 2,
        max_steps=STEPS,
        preference_column="q",
        ddp_timeout=120,
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=3,
        save_strategy="steps",
        save_steps=1,
    )
    return cpu_args(output_dir, **{**base, **overrides})


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    data = root / "pairs.jsonl"
    rows = make_pairs(ROWS, seed=9, preference=True)
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return SimpleNamespace(root=root, data=data, rows=rows, model=tiny_dir, ds_config=tiny_zero3_config(root))


@pytest.fixture(scope="module")
def jobs(setup):
    root = setup.root
    started = {}
    for name, extra in (("ddp", {}), ("zero3", {"deepspeed": setup.ds_config})):
        spec = {
            "model": setup.model,
            "data": str(setup.data),
            "out": str(root / f"{name}-out"),
            "args": _args(root / f"{name}-run", **extra),
            "crashed_dir": str(root / f"{name}-crashed"),
        }
        (root / f"{name}.json").write_text(json.dumps(spec))
        started[name] = Job(name, root, [deepspeed_two_ranks(WORKER, root / f"{name}.json")], launch_env())
        started[name].root = root
    yield started
    for job in started.values():
        job.stop()


def _records(job):
    return job.finished()


@pytest.fixture(scope="module")
def single(jobs, setup):
    """The same run in one process (global batch on one rank), trained here while the jobs run."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ipo import IPOConfig, IPOTrainer

    out = setup.root / "single-run"
    torch.manual_seed(0)
    trainer = IPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(setup.model, dtype=torch.float32),
        args=IPOConfig(**_args(out, per_device_train_batch_size=GLOBAL_BATCH)),
        train_dataset=Dataset.from_list(setup.rows),
        processing_class=AutoTokenizer.from_pretrained(setup.model),
    )
    columns = {k: list(trainer.train_dataset[k]) for k in ("ref_chosen_logps", "ref_rejected_logps")}
    trainer.train()
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    return SimpleNamespace(losses=losses, columns=columns, final=out / f"checkpoint-{STEPS}")


def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("name", ["ddp", "zero3"])
@pytest.mark.slow
def test_precomputed_reference_on_two_ranks_equals_one_process(name, jobs, single):
    records = _records(jobs[name])
    for rank, record in records.items():
        assert record["num_processes"] == 2
        expected_type = "DEEPSPEED" if name == "zero3" else "MULTI_CPU"
        assert record["distributed_type"].endswith(expected_type)
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            assert len(record[key]) == ROWS
            assert record[key] == pytest.approx(single.columns[key], rel=1e-5, abs=1e-6), (rank, key)
        losses = {int(k): v for k, v in record["losses"].items()}
        assert [losses[s] for s in range(1, STEPS + 1)] == pytest.approx(
            [single.losses[s] for s in range(1, STEPS + 1)], rel=1e-5
        ), rank
    # Step 1 has policy = reference: its loss depends on the reference columns only through Δ = 0, so later steps
    # (after the policy moved) carry the comparison; they differ from each other.
    assert len({round(v, 6) for v in single.losses.values()}) == STEPS
    run_final = _weights(jobs[name].root / f"{name}-run" / f"checkpoint-{STEPS}")
    for key, tensor in _weights(single.final).items():
        torch.testing.assert_close(run_final[key], tensor, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", ["ddp", "zero3"])
@pytest.mark.slow
def test_resume_on_two_ranks_skips_the_checkpoint_a_dying_rank_left(name, jobs):
    records = _records(jobs[name])
    crashed = jobs[name].root / f"{name}-crashed"
    for rank, record in records.items():
        assert record["resumed_from"] == str(crashed / "checkpoint-2"), rank
        resumed = {int(k): v for k, v in record["resumed_losses"].items()}
        losses = {int(k): v for k, v in record["losses"].items()}
        assert [resumed[3], resumed[4]] == pytest.approx([losses[3], losses[4]], rel=1e-6), rank
    warned = records[0]["warnings"]
    assert any("Skipping incomplete checkpoint" in w and "checkpoint-3" in w for w in warned), warned
    uninterrupted = _weights(jobs[name].root / f"{name}-run" / f"checkpoint-{STEPS}")
    for key, tensor in _weights(crashed / f"checkpoint-{STEPS}").items():
        torch.testing.assert_close(tensor, uninterrupted[key], rtol=1e-6, atol=1e-7, msg=key)


def test_in_memory_dataset_fails_on_two_ranks_in_stock_trl_for_the_reason_we_fix():
    """The cause, shown without launching: an in-memory dataset has no cache folder, so each process names a random
    file in its own temporary folder; the file rank 0 writes is never the one rank 1 reads."""
    from datasets import Dataset

    from trl_ipo.ref_cache import cache_file_path

    dataset = Dataset.from_list(make_pairs(4))
    assert dataset.cache_files == []
    assert dataset._get_cache_file_path("same") != dataset._get_cache_file_path("same")
    assert cache_file_path(dataset, "key") is None  # IPOTrainer keeps such columns in memory instead


def test_fsdp_on_cpu_ranks_is_refused_instead_of_training_unsharded(monkeypatch):
    """accelerate 1.15 never selects FSDP on CPU ranks (docs/distributed.md), so a launched CPU run asking for it
    stops with a clear error rather than training every rank as unsharded DDP."""
    import trl_ipo.launch as launch

    monkeypatch.setattr(launch, "has_accelerator_device", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    args = SimpleNamespace(deepspeed=None, use_cpu=False, ddp_backend=None, ddp_timeout=60, fsdp="full_shard")
    with pytest.raises(RuntimeError, match="does not run FSDP on CPU ranks.*ZeRO-3"):
        launch.prepare_launch(args)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp, no fsdp argument
    with pytest.raises(RuntimeError, match="does not run FSDP on CPU ranks"):
        launch.prepare_launch(SimpleNamespace(deepspeed=None, use_cpu=False, ddp_backend=None, ddp_timeout=60))
    assert not launch._fsdp_requested(SimpleNamespace(fsdp=None), environ={})
    assert not launch._fsdp_requested(SimpleNamespace(fsdp=""), environ={"ACCELERATE_USE_FSDP": "false"})


def test_file_backed_dataset_reuses_its_cache_and_ld_alpha_changes_the_key(load_model, tokenizer, tmp_path):
    """A dataset loaded from files keeps TRL's cache next to its own Arrow files, written atomically; the cache key
    includes ld_alpha (TRL's does not, so a run with another ld_alpha would read stale reference log-probs)."""
    from datasets import load_dataset

    from trl_ipo import IPOConfig, IPOTrainer

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(6, seed=2)))
    cache = tmp_path / "hf-cache"

    def build(**overrides):
        dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
        args = IPOConfig(**cpu_args(tmp_path / "out", precompute_ref_log_probs=True, **overrides))
        return IPOTrainer(model=load_model(), args=args, train_dataset=dataset, processing_class=tokenizer)

    def cached():
        return sorted(cache.rglob("cache-ref-logps-*.arrow"))

    first = build()
    assert len(cached()) == 1
    assert not list(cache.rglob("*.partial"))
    stamp = cached()[0].stat().st_mtime_ns
    second = build()
    assert cached()[0].stat().st_mtime_ns == stamp  # read back, not recomputed
    assert second.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    third = build(ld_alpha=0.5)
    assert len(cached()) == 2
    assert third.train_dataset["ref_chosen_logps"] != first.train_dataset["ref_chosen_logps"]


def test_unwritable_cache_folder_keeps_the_columns_in_memory(load_model, tokenizer, tmp_path, monkeypatch):
    from datasets import load_dataset

    import trl_ipo.ref_cache as ref_cache
    from trl_ipo import IPOConfig, IPOTrainer

    def refuse(columns, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(ref_cache, "_write_atomically", refuse)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(4, seed=3)))
    dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))
    args = IPOConfig(**cpu_args(tmp_path / "out", precompute_ref_log_probs=True))
    with pytest.warns(UserWarning, match="Could not cache the reference log-probs .*kept in memory"):
        trainer = IPOTrainer(model=load_model(), args=args, train_dataset=dataset, processing_class=tokenizer)
    values = trainer.train_dataset["ref_chosen_logps"]
    assert len(values) == 4
    assert all(v < 0 for v in values)
