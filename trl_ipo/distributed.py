"""Launched runs that really distribute, and the packaged DeepSpeed / accelerate configs.

Each job a small function:

* :func:`resolve_config` turns a short name (``zero3``, ``zero3_offload``; for accelerate ``zero3``,
  ``zero3_multinode``) or a path into the path of a config file. The packaged files live in ``trl_ipo/configs``.
* :func:`prepare_launch` runs inside ``IPOConfig.__post_init__``, before ``TrainingArguments`` sets up devices and
  long before the ``Accelerator`` exists. On a host without GPUs it brings up the process group itself (gloo) so a
  launched multi-process run (``deepspeed``, ``torchrun``, ``accelerate launch``, each also under ``srun``)
  distributes for real:

  - DeepSpeed: accelerate 1.15 picks no backend on a CPU host and records one process while DeepSpeed brings up
    gloo with all of them, which ends in DeepSpeed's ``train_batch_size`` assertion. Here the shared
    ``PartialState`` is built first with ``backend="gloo"`` and ``ACCELERATE_USE_DEEPSPEED=true``, and the config
    is told to use it (``accelerator_config.use_configured_state=True``).
  - Plain DDP: without ``use_cpu=True`` every rank would silently train alone on all the data. The state is built
    as multi-CPU (gloo) and ``use_cpu`` is set.

  Both honour ``ddp_timeout`` (seconds) as the collective timeout.
* :func:`check_launch` runs right after the devices are set up and stops with a clear error when the number of
  processes the trainer will use differs from the number the launcher started — never a silent undistributed run.

* :func:`fill_zero3_auto_sizes` (called by ``IPOTrainer`` before TRL prepares the reference) gives the reference the
  same hidden-size-based ZeRO-3 sizes as the policy.
* :func:`last_complete_checkpoint` finds the newest checkpoint that a dying rank did not interrupt.
* :func:`parameter_shards` reports how a model's parameters are held on this rank (ZeRO-3 partitions or whole
  tensors); the tests and ``scripts/shard_memory.py`` use it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Short name -> packaged file, per kind.
PACKAGED_CONFIGS: dict[str, dict[str, str]] = {
    "deepspeed": {
        "zero3": "zero3.json",
        "zero3_offload": "zero3_offload.json",
    },
    "accelerate": {
        "zero3": "accelerate_zero3.yaml",
        "zero3_multinode": "accelerate_zero3_multinode.yaml",
    },
}

# Environment variables through which launchers announce the world size (torchrun, deepspeed and accelerate set
# WORLD_SIZE; MPI launchers set their own).
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_CPU_BACKENDS = (None, "gloo", "mpi", "ccl")


# ------------------------------------------------------------------------------------------------------ configs
def available_configs(kind: str = "deepspeed") -> dict[str, str]:
    """The packaged configs of ``kind`` (``"deepspeed"`` or ``"accelerate"``): short name -> absolute path."""
    table = _table(kind)
    return {name: str(CONFIG_DIR / filename) for name, filename in table.items()}


def resolve_config(name_or_path: str | os.PathLike, kind: str = "deepspeed") -> str:
    """Path of a DeepSpeed JSON or accelerate YAML, given a packaged short name or a file path.

    An existing file wins over a short name. ``"zero3"``, ``"zero3.json"`` and the packaged file name all name the
    packaged config. Anything else raises ``FileNotFoundError`` listing the packaged names.
    """
    table = _table(kind)
    if name_or_path is None or not str(name_or_path).strip():
        raise ValueError(f"resolve_config: expected a {kind} config name or path, got {name_or_path!r}.")
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return str(path.resolve())
    name = str(name_or_path).strip()
    by_filename = {filename: filename for filename in table.values()}
    stem = name.rsplit(".", 1)[0] if name.endswith((".json", ".yaml", ".yml")) else name
    filename = table.get(name) or table.get(stem) or by_filename.get(name)
    if filename is None:
        raise FileNotFoundError(
            f"{kind} config {name!r} is neither an existing file nor a packaged config. "
            f"Packaged {kind} configs: {', '.join(sorted(table))} (in {CONFIG_DIR})."
        )
    return str(CONFIG_DIR / filename)


def _table(kind: str) -> dict[str, str]:
    if kind not in PACKAGED_CONFIGS:
        raise ValueError(f"Unknown config kind {kind!r}; expected one of {sorted(PACKAGED_CONFIGS)}.")
    return PACKAGED_CONFIGS[kind]


# ------------------------------------------------------------------------------------------------------ launches
def launched_world_size(environ=None) -> int:
    """Number of processes the launcher started (1 when not launched)."""
    environ = os.environ if environ is None else environ
    for var in _WORLD_SIZE_VARS:
        value = environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as err:
                raise ValueError(f"Environment variable {var}={value!r} is not an integer world size.") from err
    return 1


def is_launched(environ=None) -> bool:
    """Whether this process was started by a distributed launcher."""
    environ = os.environ if environ is None else environ
    return launched_world_size(environ) > 1 or environ.get("LOCAL_RANK") not in (None, "")


def has_accelerator_device() -> bool:
    """Whether a device backend that accelerate picks on its own (CUDA, XPU, NPU, MLU, MUSA) is present."""
    import torch
    from accelerate.utils import is_mlu_available, is_musa_available, is_npu_available, is_xpu_available

    checks = (torch.cuda.is_available, is_xpu_available, is_npu_available, is_mlu_available, is_musa_available)
    return any(check() for check in checks)


def prepare_launch(args) -> None:
    """Make the run described by ``args`` (a ``TrainingArguments``) distribute for real. Call before device setup.

    * ``args.deepspeed`` given as a short name is resolved to the packaged file.
    * GPU hosts, and single processes started without a launcher, are left to accelerate — except DeepSpeed on a
      host without GPUs, which needs a launcher and says so.
    * CPU hosts: the process group is brought up here with gloo and ``args.ddp_timeout`` — as a DeepSpeed state when
      ``args.deepspeed`` is set, else as multi-CPU DDP with ``args.use_cpu = True``.
    """
    if isinstance(args.deepspeed, str) and args.deepspeed.strip().startswith("{"):
        args.deepspeed = json.loads(args.deepspeed)  # an inline JSON config, as TrainingArguments accepts
    elif isinstance(args.deepspeed, (str, os.PathLike)) and str(args.deepspeed).strip():
        args.deepspeed = resolve_config(args.deepspeed, "deepspeed")
    _refuse_bare_srun()
    if has_accelerator_device() and not args.use_cpu:
        return
    if not is_launched() and not args.deepspeed:
        return  # one plain process: nothing to distribute
    if _fsdp_requested(args):
        raise RuntimeError(
            "FSDP was requested (fsdp=... or accelerate's ACCELERATE_USE_FSDP) for CPU ranks. accelerate 1.15 does "
            "not run FSDP on CPU ranks: each rank would train as plain DDP (or alone), unsharded, although torch's "
            "fully_shard itself works over gloo. On CPU ranks use DeepSpeed ZeRO-3 (deepspeed='zero3'); see "
            "docs/distributed.md."
        )
    if args.ddp_backend not in _CPU_BACKENDS:
        raise ValueError(
            f"ddp_backend={args.ddp_backend!r} needs GPUs, but this host has none. On CPU ranks use "
            "ddp_backend='gloo' (or leave it unset)."
        )
    if args.deepspeed:
        _bring_up_deepspeed_on_cpu(args)
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise RuntimeError(
            "accelerate launch asked for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true) on a host without GPUs, but the "
            "training arguments carry no DeepSpeed config, so the run would not be sharded. Pass --deepspeed zero3 "
            "(or a config path) to the training script, or launch with `deepspeed --num_gpus N`."
        )
    else:
        _bring_up_ddp_on_cpu(args)


def _fsdp_requested(args, environ=None) -> bool:
    environ = os.environ if environ is None else environ
    fsdp = getattr(args, "fsdp", None)
    given = fsdp not in (None, False, "", [], "false", "False")
    return given or environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def _refuse_bare_srun(environ=None) -> None:
    """``srun -n N python train.py`` starts N unrelated trainings: no launcher told them about each other."""
    environ = os.environ if environ is None else environ
    tasks = environ.get("SLURM_STEP_NUM_TASKS", "")
    if tasks.isdigit() and int(tasks) > 1 and not is_launched(environ):
        raise RuntimeError(
            f"srun started {tasks} tasks of this script without a distributed launcher, so each would train alone on "
            "all the data. Start one launcher per node instead: srun --ntasks-per-node=1 "
            "scripts/launch_multinode.sh --node-rank $SLURM_NODEID ... (see scripts/slurm_ipo.sbatch), or torchrun."
        )


def _bring_up_deepspeed_on_cpu(args) -> None:
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    if not is_launched():
        raise RuntimeError(
            f"deepspeed={args.deepspeed!r} on a host without GPUs needs a launcher that starts the process group, "
            "e.g. `deepspeed --num_gpus 1 train.py ...` (or --num_gpus 2 for two CPU ranks), or "
            "scripts/launch_multinode.sh. Without DeepSpeed, a single process trains as usual."
        )
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    _skip_shm_kernel_build()
    state = PartialState._shared_state
    reuse = bool(state) and state.get("distributed_type") == DistributedType.DEEPSPEED
    # A new config starts a new Accelerator (as TrainingArguments does when it builds its own state); the process
    # group is kept when it already is the DeepSpeed one.
    AcceleratorState._reset_state(reset_partial_state=not reuse)
    if not reuse:
        PartialState(backend=args.ddp_backend or "gloo", timeout=timedelta(seconds=args.ddp_timeout))
    _use_configured_state(args)
    logger.info("DeepSpeed on CPU ranks: process group brought up with gloo (timeout %ss).", args.ddp_timeout)


def _bring_up_ddp_on_cpu(args) -> None:
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    if not args.use_cpu:
        logger.info(
            "No GPU on this host: the %d launched ranks train as CPU DDP (use_cpu=True).",
            launched_world_size(),
        )
        args.use_cpu = True
    state = PartialState._shared_state
    reuse = bool(state) and state.get("distributed_type") == DistributedType.MULTI_CPU
    AcceleratorState._reset_state(reset_partial_state=not reuse)
    if not reuse:
        backend = args.ddp_backend if args.ddp_backend in ("gloo", "mpi", "ccl") else None
        kwargs = {"backend": backend} if backend else {}
        PartialState(cpu=True, timeout=timedelta(seconds=args.ddp_timeout), **kwargs)
    _use_configured_state(args)


def _skip_shm_kernel_build() -> None:
    """Keep DeepSpeed's CPU accelerator from JIT-compiling its shared-memory all-reduce kernel at start-up.

    That kernel serves only ``deepspeed.comm.inference_all_reduce``; ZeRO training talks through gloo. Compiling it
    takes minutes on a small host, on every fresh machine.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _use_configured_state(args) -> None:
    """Tell ``TrainingArguments`` to keep the state built above instead of building (and resetting) its own."""
    from transformers.trainer_pt_utils import AcceleratorConfig

    config = args.accelerator_config
    if config is None:
        args.accelerator_config = {"use_configured_state": True}
    elif isinstance(config, dict):
        args.accelerator_config = {**config, "use_configured_state": True}
    elif isinstance(config, AcceleratorConfig):
        config.use_configured_state = True
    elif isinstance(config, str) and config.strip().startswith("{"):  # inline JSON
        args.accelerator_config = {**json.loads(config), "use_configured_state": True}
    else:  # a JSON file path
        with open(config) as handle:
            args.accelerator_config = {**json.load(handle), "use_configured_state": True}


def check_launch(args) -> None:
    """Stop with a clear error if the trainer would run fewer (or more) processes than the launcher started.

    Call after ``TrainingArguments`` set up its devices (``args.world_size`` is the number of processes the
    ``Accelerator`` will use). Also checks that a DeepSpeed config really gave a DeepSpeed state.
    """
    launched = launched_world_size()
    if not is_launched():
        return
    trained = args.world_size
    if trained != launched:
        raise RuntimeError(
            f"The launcher started {launched} processes (WORLD_SIZE={launched}) but the trainer would run as "
            f"{trained}: each rank would train alone on all the data. No GPU backend was found "
            f"(has_accelerator_device()={has_accelerator_device()}); on CPU ranks pass use_cpu=True for DDP, or a "
            "DeepSpeed config, and let trl_ipo bring up gloo."
        )
    if args.deepspeed:
        from accelerate.utils import DistributedType

        if args.distributed_state.distributed_type != DistributedType.DEEPSPEED:
            raise RuntimeError(
                f"deepspeed={args.deepspeed!r} was given but the distributed state is "
                f"{args.distributed_state.distributed_type}: the model would not be sharded."
            )


_HIDDEN_SIZE_KEYS = (
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
)


def fill_zero3_auto_sizes(args, model) -> None:
    """Fill the hidden-size-based ``"auto"`` ZeRO-3 sizes now, so the reference gets the policy's values.

    ``transformers`` fills ``reduce_bucket_size`` = h², ``stage3_prefetch_bucket_size`` = 0.9·h² and
    ``stage3_param_persistence_threshold`` = 10·h only when ``train()`` starts, but TRL 1.16 prepares the reference
    (``prepare_deepspeed``) in ``__init__``, and the overrides it adds there use dotted keys that DeepSpeed ignores.
    Left alone, the reference runs with DeepSpeed's defaults (persistence threshold 10⁵: every tensor smaller than
    that kept whole on every rank). Call with the trainer's ``args`` and ``model`` (object or path) before the
    trainer is built; explicit numbers in the config are kept.
    """
    hf_config = getattr(args, "hf_deepspeed_config", None)
    if hf_config is None or not hf_config.is_zero3() or not any(hf_config.is_auto(key) for key in _HIDDEN_SIZE_KEYS):
        return
    hidden = model_hidden_size(model, trust_remote_code=getattr(args, "trust_remote_code", False))
    if hidden is None:
        return  # transformers stops at train() with its own message naming the keys to set
    hf_config.fill_only("zero_optimization.reduce_bucket_size", hidden * hidden)
    hf_config.fill_only("zero_optimization.stage3_prefetch_bucket_size", int(0.9 * hidden * hidden))
    hf_config.fill_only("zero_optimization.stage3_param_persistence_threshold", 10 * hidden)


def model_hidden_size(model, trust_remote_code: bool = False) -> int | None:
    """Hidden size of a model object or a model path (the largest of ``hidden_sizes``; ``text_config`` as fallback)."""
    config = getattr(model, "config", None)
    if config is None and isinstance(model, (str, os.PathLike)):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
        except (OSError, ValueError):
            return None  # the trainer's own model loading reports the bad path
    for cfg in (config, getattr(config, "text_config", None)):
        if cfg is None:
            continue
        if getattr(cfg, "hidden_size", None):
            return int(cfg.hidden_size)
        if getattr(cfg, "hidden_sizes", None):
            return int(max(cfg.hidden_sizes))
    return None


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` folder of ``output_dir``, or ``None`` (see :mod:`trl_ipo.checkpoints`)."""
    from .checkpoints import newest_complete_checkpoint

    info, _ = newest_complete_checkpoint(output_dir)
    return None if info is None else info.path


# ---------------------------------------------------------------------------------------------------- reporting
def parameter_shards(model) -> dict:
    """How ``model``'s parameters are held on this rank.

    Under ZeRO-3 each parameter keeps only its partition (``ds_tensor``, ⌈numel / world⌉ elements, padded) and its
    ``ds_status`` is ``NOT_AVAILABLE`` between forward passes. Returns element and byte counts held locally and in
    full, the number of parameters, and how many are partitioned (ZeRO-3 parameters not currently gathered).
    """
    local_numel = full_numel = local_bytes = full_bytes = partitioned = count = 0
    statuses: dict[str, int] = {}
    for param in model.parameters():
        count += 1
        size = param.element_size()
        if hasattr(param, "ds_tensor"):  # a ZeRO-3 parameter
            status = param.ds_status.name
            statuses[status] = statuses.get(status, 0) + 1
            numel = param.ds_numel
            local = param.ds_tensor.numel()
            size = param.ds_tensor.element_size()
            if status == "NOT_AVAILABLE":
                partitioned += 1
            else:
                local += param.numel()  # gathered (or persistent): the full tensor is held as well
        else:
            numel = local = param.numel()
        local_numel += local
        full_numel += numel
        local_bytes += local * size
        full_bytes += numel * size
    return {
        "num_params": count,
        "num_partitioned": partitioned,
        "ds_status": statuses,
        "local_numel": local_numel,
        "full_numel": full_numel,
        "local_bytes": local_bytes,
        "full_bytes": full_bytes,
    }


def _main(argv: list[str] | None = None) -> int:
    """``python -m trl_ipo.distributed [--kind accelerate] NAME`` prints a config's path; without NAME, lists them."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m trl_ipo.distributed", description=_main.__doc__)
    parser.add_argument("name", nargs="?", help="short name (e.g. zero3) or a path; omit to list the packaged configs")
    parser.add_argument("--kind", choices=sorted(PACKAGED_CONFIGS), default="deepspeed")
    ns = parser.parse_args(argv)
    if ns.name is None:
        for kind in sorted(PACKAGED_CONFIGS):
            for name, path in available_configs(kind).items():
                print(f"{kind:<11} {name:<16} {path}")
        return 0
    try:
        print(resolve_config(ns.name, ns.kind))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
