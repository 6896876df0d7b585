"""Launched runs that really distribute: the process group of a launched CPU run, and the check that it took.

Why this runs inside the config. ``TrainingArguments.__post_init__`` sets up the devices: it builds accelerate's
shared ``PartialState``, which decides the backend and the number of processes for the rest of the run. On a host
without GPUs that decision is wrong for a launched run, and nothing after it can fix it:

* DeepSpeed: accelerate 1.15 picks no backend on a CPU host and records one process while DeepSpeed brings up gloo
  with all of them, which ends in DeepSpeed's ``train_batch_size`` assertion. :func:`prepare_launch` builds the
  shared ``PartialState`` first with ``backend="gloo"`` and ``ACCELERATE_USE_DEEPSPEED=true``, and tells the config
  to keep it (``accelerator_config.use_configured_state=True``).
* Plain DDP: without ``use_cpu=True`` every rank would silently train alone on all the data. The state is built as
  multi-CPU (gloo) and ``use_cpu`` is set.

Both honour ``ddp_timeout`` (seconds) as the collective timeout. So ``IPOConfig.__post_init__`` (and
``OnlineIPOConfig``'s) call :func:`prepare_launch` before ``TrainingArguments.__post_init__`` and :func:`check_launch`
right after it; :func:`check_launch` stops with a clear error when the number of processes the trainer will use
differs from the number the launcher started — never a silent undistributed run. This module is the only place in
``trl_ipo`` that starts a process group or sets environment variables for it. On a host with GPUs, and for a single
process started without a launcher, nothing here changes anything.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta

from . import _compat
from .distributed import resolve_config

logger = logging.getLogger(__name__)

# Environment variables through which launchers announce the world size (torchrun, deepspeed and accelerate set
# WORLD_SIZE; MPI launchers set their own).
_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_CPU_BACKENDS = (None, "gloo", "mpi", "ccl")


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
      ``args.deepspeed`` is set, else as multi-CPU DDP with ``args.use_cpu = True``. FSDP, which accelerate 1.15
      does not run on CPU ranks, is refused.
    """
    if isinstance(args.deepspeed, (str, os.PathLike)) and str(args.deepspeed).strip():
        args.deepspeed = resolve_config(args.deepspeed, "deepspeed")
        if args.deepspeed.lstrip().startswith("{"):
            args.deepspeed = json.loads(args.deepspeed)  # an inline JSON config, as TrainingArguments accepts
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
    from accelerate.utils import DistributedType

    if not is_launched():
        raise RuntimeError(
            f"deepspeed={args.deepspeed!r} on a host without GPUs needs a launcher that starts the process group, "
            "e.g. `deepspeed --num_gpus 1 train.py ...` (or --num_gpus 2 for two CPU ranks), or "
            "scripts/launch_multinode.sh. Without DeepSpeed, a single process trains as usual."
        )
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    _skip_shm_kernel_build()
    # A new config starts a new Accelerator (as TrainingArguments does when it builds its own state); the process
    # group is kept when it already is the DeepSpeed one.
    reuse = _compat.reset_accelerate_state(DistributedType.DEEPSPEED)
    if not reuse:
        PartialState(backend=args.ddp_backend or "gloo", timeout=timedelta(seconds=args.ddp_timeout))
    _use_configured_state(args)
    logger.info("DeepSpeed on CPU ranks: process group brought up with gloo (timeout %ss).", args.ddp_timeout)


def _bring_up_ddp_on_cpu(args) -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    if not args.use_cpu:
        logger.info(
            "No GPU on this host: the %d launched ranks train as CPU DDP (use_cpu=True).",
            launched_world_size(),
        )
        args.use_cpu = True
    reuse = _compat.reset_accelerate_state(DistributedType.MULTI_CPU)
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
    _compat.disable_deepspeed_op("deepspeed_shm_comm")


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
