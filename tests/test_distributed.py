"""Distributed IPO on two CPU ranks.

Three launched jobs start together (module fixture) and run while one plain process trains in this process:

* ``zero3``: the ``deepspeed`` launcher, one node, 2 ranks, ZeRO-3 (persistence threshold 0 so the tiny model
  really shards), soft labels, checkpoints every 2 steps, then a resume from checkpoint-2 in the same processes.
* ``ddp``: two "nodes" on loopback — two ``scripts/launch_multinode.sh`` invocations (node rank 0 and 1, one rank
  each) — plain DDP launched *without* ``use_cpu=True`` (the guard must make it distribute).
* ``death``: the same two nodes under ZeRO-3, checkpoint every step; node 1's rank exits at the end of step 2.

Every job uses the same global batch (4 pairs), seed and data, and one epoch of 16 rows over 4 steps.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import cpu_args, global_rng_restored, make_pairs
from launch import REPO, Job, deepspeed_two_ranks, free_port, launch_env, tiny_zero3_config

WORKER = REPO / "tests" / "workers" / "dist_ipo.py"
LAUNCH_SCRIPT = REPO / "scripts" / "launch_multinode.sh"

ROWS, GLOBAL_BATCH, STEPS, BETA = 16, 4, 4, 0.1
COLLECTIVE_TIMEOUT_S = 90  # ddp_timeout of the launched runs (distinct from the 1800 s default on purpose)
DIE_RANK, DIE_STEP, DIE_CODE = 1, 2, 17


def _run_args(output_dir, **overrides):
    base = dict(
        per_device_train_batch_size=GLOBAL_BATCH // 2,
        max_steps=STEPS,
        beta=BETA,
        preference_column="q",
        ddp_timeout=COLLECTIVE_TIMEOUT_S,
    )
    return cpu_args(output_dir, **{**base, **overrides})


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in make_pairs(ROWS, seed=7, preference=True)))
    hostfile = root / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    return SimpleNamespace(root=root, data=data, ds_config=tiny_zero3_config(root), hostfile=hostfile, model=tiny_dir)


@pytest.fixture(scope="module")
def jobs(setup):
    root = setup.root
    env = launch_env()

    def spec(name, args, **extra):
        path = root / f"{name}.json"
        out = str(root / f"{name}-out")
        path.write_text(json.dumps({"model": setup.model, "data": str(setup.data), "out": out, "args": args, **extra}))
        return str(path)

    def two_nodes(spec_path):
        port = str(free_port())
        common = [str(LAUNCH_SCRIPT), "--hostfile", str(setup.hostfile), "--master-addr", "127.0.0.1"]
        common += ["--master-port", port]
        return [[*common, "--node-rank", str(rank), str(WORKER), spec_path] for rank in (0, 1)]

    zero3_spec = spec(
        "zero3",
        _run_args(root / "zero3-run", deepspeed=setup.ds_config, save_strategy="steps", save_steps=2),
        resume={"checkpoint": "checkpoint-2", "args": {"output_dir": str(root / "zero3-resumed")}},
    )
    ddp_spec = spec("ddp", _run_args(root / "ddp-run", use_cpu=False))
    death_spec = spec(
        "death",
        _run_args(root / "death-run", deepspeed="zero3", save_strategy="steps", save_steps=1),  # packaged, "auto"
        die={"rank": DIE_RANK, "step": DIE_STEP},
    )
    started = {
        "zero3": Job("zero3", root, [deepspeed_two_ranks(WORKER, zero3_spec)], env),
        "ddp": Job("ddp", root, two_nodes(ddp_spec), env),
        "death": Job("death", root, two_nodes(death_spec), env),
    }
    yield started
    for job in started.values():
        job.stop()


def _finished(job):
    return job.finished()


@pytest.fixture(scope="module")
def single(jobs, setup):
    """The same training in one plain process (global batch on one rank), run here while the jobs run."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ipo import IPOConfig, IPOTrainer

    output_dir = setup.root / "single-run"
    with global_rng_restored():  # Trainer reseeds the global generators
        rows = [json.loads(line) for line in setup.data.read_text().splitlines()]
        args = IPOConfig(
            **_run_args(output_dir, per_device_train_batch_size=GLOBAL_BATCH, save_strategy="steps", save_steps=2)
        )
        model = AutoModelForCausalLM.from_pretrained(setup.model, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(setup.model)
        trainer = IPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return SimpleNamespace(losses=losses, checkpoint=output_dir / "checkpoint-2", rows=rows)


def _full_numel(tiny_dir):
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters())


# ------------------------------------------------------------------------------------------------- must hold 2
@pytest.mark.slow
def test_step_losses_equal_for_zero3_ddp_and_one_process(jobs, single):
    zero3 = _finished(jobs["zero3"])
    ddp = _finished(jobs["ddp"])
    assert len(single.losses) == STEPS
    for name, records in (("zero3", zero3), ("ddp", ddp)):
        for rank, record in records.items():
            assert record["losses"] == pytest.approx(single.losses, rel=1e-5), (name, rank)
    # After step 1 the policy has moved, so the losses differ: the comparison covers the optimiser updates too.
    assert len(set(round(x, 6) for x in single.losses)) == STEPS


# ------------------------------------------------------------------------------------------------- must hold 1
@pytest.mark.slow
def test_zero3_partitions_policy_and_reference_on_every_rank(jobs, setup):
    records = _finished(jobs["zero3"])
    full = _full_numel(setup.model)
    for rank, record in records.items():
        assert record["num_processes"] == record["env_world_size"] == 2
        assert record["distributed_type"] == "DistributedType.DEEPSPEED"
        for role in ("policy", "reference"):
            held = record[role]
            assert held["full_numel"] == full, (rank, role)
            assert held["num_partitioned"] == held["num_params"] > 0, (rank, role, held["ds_status"])
            assert held["ds_status"] == {"NOT_AVAILABLE": held["num_params"]}
            # ⌈numel/2⌉ per tensor: half the model, plus at most one padding element per tensor.
            assert full / 2 <= held["local_numel"] <= full / 2 + held["num_params"], (rank, role, held)
    for role in ("policy", "reference"):
        assert sum(records[r][role]["local_numel"] for r in (0, 1)) >= full


# ------------------------------------------------------------------------------------------------- must hold 3
@pytest.mark.slow
def test_two_nodes_on_loopback_train_to_completion_as_one_ddp_job(jobs):
    records = _finished(jobs["ddp"])
    for rank, record in records.items():
        # Launched without use_cpu=True on a host without GPUs: still one 2-process job, not two lone trainers.
        assert record["num_processes"] == 2, rank
        assert record["distributed_type"] == "DistributedType.MULTI_CPU"
        assert len(record["losses"]) == STEPS
    assert records[0]["losses"] == records[1]["losses"]


# ------------------------------------------------------------------------------------------------- must hold 4
@pytest.mark.slow
def test_zero3_checkpoint_loads_in_transformers_and_resume_continues_the_same(jobs, single):
    from transformers import AutoModelForCausalLM
    from transformers.trainer_utils import get_last_checkpoint

    records = _finished(jobs["zero3"])
    run_dir = jobs["zero3"].out.parent / "zero3-run"
    checkpoint = run_dir / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()  # gathered weights, not only ZeRO shards
    assert get_last_checkpoint(str(run_dir)).endswith("checkpoint-4")
    sharded = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).state_dict()
    plain = AutoModelForCausalLM.from_pretrained(single.checkpoint, dtype=torch.float32).state_dict()
    assert sharded.keys() == plain.keys()
    for name, tensor in plain.items():
        assert sharded[name].shape == tensor.shape, name
        torch.testing.assert_close(sharded[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    for rank, record in records.items():
        resumed = dict(zip(record["resumed_steps"], record["resumed_losses"], strict=True))
        assert sorted(resumed)[-2:] == [3, 4]
        assert [resumed[3], resumed[4]] == pytest.approx(record["losses"][2:], rel=1e-5), rank


# ------------------------------------------------------------------------------------------------- must hold 5
@pytest.mark.slow
def test_a_dying_rank_ends_the_job_nonzero_and_leaves_a_loadable_checkpoint(jobs):
    from transformers import AutoModelForCausalLM

    from trl_ipo.distributed import last_complete_checkpoint

    job = jobs["death"]
    codes = job.wait()  # bounded by JOB_LIMIT_S; the survivor raises on the broken collective (or after ddp_timeout)
    assert codes[DIE_RANK] == DIE_CODE, job.tail()
    assert codes[1 - DIE_RANK] != 0, f"the surviving node exited 0:\n{job.tail()}"
    assert not job.records()  # neither rank finished training
    last = last_complete_checkpoint(job.out.parent / "death-run")
    assert last is not None
    assert Path(last).name == f"checkpoint-{DIE_STEP - 1}", last
    state = json.loads((Path(last) / "trainer_state.json").read_text())
    assert state["global_step"] == DIE_STEP - 1
    model = AutoModelForCausalLM.from_pretrained(last, dtype=torch.float32)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_packaged_zero3_gives_the_reference_the_policy_sizes(jobs, setup):
    """The death job runs the packaged `zero3` (by short name): its "auto" sizes are filled from the hidden size
    before TRL prepares the reference, so the reference is not left on DeepSpeed's defaults."""
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(setup.model).hidden_size
    jobs["death"].wait()
    init = jobs["death"].records("-init")
    assert sorted(init) == [0, 1], jobs["death"].tail()
    for rank, record in init.items():
        zero = record["zero_optimization"]
        assert zero["stage3_param_persistence_threshold"] == 10 * hidden, rank
        assert zero["reduce_bucket_size"] == hidden * hidden
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * hidden**2)
        assert record["reference_persistence_threshold"] == 10 * hidden, rank
    for rank, record in _finished(jobs["zero3"]).items():  # explicit numbers are kept, for both models
        assert record["policy_persistence_threshold"] == 0, rank
        assert jobs["zero3"].records("-init")[rank]["reference_persistence_threshold"] == 0, rank


@pytest.mark.slow
def test_launched_runs_use_the_configured_collective_timeout(jobs):
    for name in ("zero3", "ddp"):
        for record in _finished(jobs[name]).values():
            assert record["collective_timeout_s"] == COLLECTIVE_TIMEOUT_S, name


# ------------------------------------------------------------------------------------------------- must hold 6
@pytest.mark.slow
def test_soft_labels_under_zero3(jobs, single):
    records = _finished(jobs["zero3"])
    # One epoch: the per-step mean targets average to the dataset mean of t/β = (q − ½)/β (paper form, symmetric).
    expected_target = sum((row["q"] - 0.5) / BETA for row in single.rows) / ROWS
    # Step 1 has policy = reference (Δ = 0), so the loss is the mean of (t/β)² over the first batch; with hard
    # labels every pair would give (½/β)² = 25.
    for rank, record in records.items():
        assert sum(record["ipo_targets"]) / STEPS == pytest.approx(expected_target, rel=1e-5), rank
        assert record["losses"][0] != pytest.approx((0.5 / BETA) ** 2, rel=1e-3)
        assert record["losses"][0] <= max(((row["q"] - 0.5) / BETA) ** 2 for row in single.rows) + 1e-6


# ---------------------------------------------------------------------------------------- guard and configs (no launch)
def test_resolve_config_by_short_name_file_name_and_path(tmp_path):
    from trl_ipo.distributed import CONFIG_DIR, resolve_config

    assert resolve_config("zero3") == str(CONFIG_DIR / "zero3.json")
    assert resolve_config("zero3.json") == str(CONFIG_DIR / "zero3.json")
    assert resolve_config("zero3_offload") == str(CONFIG_DIR / "zero3_offload.json")
    assert resolve_config("zero3", kind="accelerate") == str(CONFIG_DIR / "accelerate_zero3.yaml")
    assert resolve_config("zero3_multinode", kind="accelerate") == str(CONFIG_DIR / "accelerate_zero3_multinode.yaml")
    own = tmp_path / "zero3"  # an existing file wins over the short name
    own.write_text("{}")
    assert resolve_config(own) == str(own.resolve())
    inline = '{"zero_optimization": {"stage": 3}}'  # an inline config passes through unchanged
    assert resolve_config(inline) is inline
    with pytest.raises(FileNotFoundError, match="zero3, zero3_offload"):
        resolve_config("zero2")
    with pytest.raises(ValueError, match="kind"):
        resolve_config("zero3", kind="fsdp")


def test_packaged_deepspeed_configs_are_zero3_with_auto_fields():
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from trl_ipo.distributed import resolve_config

    for name, offload in (("zero3", False), ("zero3_offload", True)):
        raw = json.loads(Path(resolve_config(name)).read_text())
        zero = raw["zero_optimization"]
        assert zero["stage"] == 3
        assert zero["stage3_gather_16bit_weights_on_model_save"] is True
        assert raw["bf16"]["enabled"] == "auto"
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            assert raw[key] == "auto", (name, key)
        assert zero["stage3_param_persistence_threshold"] == "auto"
        assert ("offload_param" in zero) == offload == ("offload_optimizer" in zero)
        if offload:
            assert zero["offload_param"]["device"] == zero["offload_optimizer"]["device"] == "cpu"
        parsed = HfTrainerDeepSpeedConfig(resolve_config(name))
        assert parsed.is_zero3()
        assert parsed.is_offload() == offload


def test_packaged_accelerate_configs_load_as_deepspeed_zero3():
    from accelerate.commands.config.config_args import load_config_from_file

    from trl_ipo.distributed import resolve_config

    for name, machines in (("zero3", 1), ("zero3_multinode", 2)):
        config = load_config_from_file(resolve_config(name, kind="accelerate"))
        assert str(config.distributed_type).endswith("DEEPSPEED")
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["zero3_save_16bit_model"]
        assert config.num_machines == machines
        assert config.num_processes == 8 * machines


def test_check_launch_stops_a_run_that_would_train_each_rank_alone(monkeypatch):
    from trl_ipo.launch import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(RuntimeError, match="started 2 processes .* would run as 1"):
        check_launch(SimpleNamespace(world_size=1, deepspeed=None))
    check_launch(SimpleNamespace(world_size=2, deepspeed=None))  # consistent: no error


def test_prepare_launch_stops_runs_that_would_not_distribute(monkeypatch):
    import trl_ipo.launch as launch
    from trl_ipo.distributed import resolve_config

    monkeypatch.setattr(launch, "has_accelerator_device", lambda: False)
    for var in ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    args = SimpleNamespace(deepspeed="zero3", use_cpu=True, ddp_backend=None, ddp_timeout=60)
    with pytest.raises(RuntimeError, match="needs a launcher"):
        launch.prepare_launch(args)
    assert args.deepspeed == resolve_config("zero3")  # the short name was resolved first
    inline = SimpleNamespace(
        deepspeed='{"zero_optimization": {"stage": 3}}', use_cpu=True, ddp_backend=None, ddp_timeout=60
    )
    with pytest.raises(RuntimeError, match="needs a launcher"):
        launch.prepare_launch(inline)
    assert inline.deepspeed == {"zero_optimization": {"stage": 3}}  # inline JSON is a config, not a name
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")  # `srun -n 4 python train.py`: four lone trainings
    with pytest.raises(RuntimeError, match="srun started 4 tasks"):
        launch.prepare_launch(SimpleNamespace(deepspeed=None, use_cpu=True, ddp_backend=None, ddp_timeout=60))
    monkeypatch.setenv("WORLD_SIZE", "2")  # the same tasks under a launcher are fine (as far as srun is concerned)
    with pytest.raises(ValueError, match="ddp_backend='nccl'"):
        launch.prepare_launch(SimpleNamespace(deepspeed=None, use_cpu=False, ddp_backend="nccl", ddp_timeout=60))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # accelerate launch with a DeepSpeed YAML, no --deepspeed
    with pytest.raises(RuntimeError, match="would not be sharded"):
        launch.prepare_launch(SimpleNamespace(deepspeed=None, use_cpu=False, ddp_backend=None, ddp_timeout=60))


def test_launch_script_builds_the_deepspeed_command(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=2\nb slots=2\n")

    def run(*args):
        return subprocess.run([str(LAUNCH_SCRIPT), *args], capture_output=True, text=True, cwd=REPO)

    multi = run(
        "--hostfile",
        str(hostfile),
        "--master-addr",
        "10.0.0.1",
        "--master-port",
        "29501",
        "--num-nodes",
        "2",
        "--gpus-per-node",
        "2",
        "--node-rank",
        "1",
        "--dry-run",
        "--",
        str(WORKER),
        "spec.json",
        "--flag",
    )
    assert multi.returncode == 0, multi.stderr
    assert multi.stdout.split() == [
        "deepspeed",
        "--master_port",
        "29501",
        "--hostfile",
        str(hostfile),
        "--master_addr",
        "10.0.0.1",
        "--num_nodes",
        "2",
        "--num_gpus",
        "2",
        "--no_ssh",
        "--node_rank",
        "1",
        str(WORKER),
        "spec.json",
        "--flag",
    ]
    default = run("--dry-run")
    assert default.returncode == 0
    assert default.stdout.split()[-1] == str(REPO / "scripts" / "train_ipo.py")
    missing_master = run("--hostfile", str(hostfile), "--dry-run", str(WORKER))
    assert missing_master.returncode == 2
    assert "--master-addr" in missing_master.stderr
