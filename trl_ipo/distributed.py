"""DeepSpeed / ZeRO-3 helpers: the packaged configs, the reference's ZeRO-3 sizes, checkpoints, parameter shards.

* :func:`resolve_config` turns a short name (``zero3``, ``zero3_offload``; for accelerate ``zero3``,
  ``zero3_multinode``), a path, or an inline JSON object into what ``TrainingArguments.deepspeed`` (or
  ``accelerate launch --config_file``) takes. It is the one place where short names are resolved. The packaged
  files live in ``trl_ipo/configs``; ``python -m trl_ipo.distributed [--kind accelerate] NAME`` prints a path.
* :func:`fill_zero3_auto_sizes` (called by ``IPOTrainer`` before TRL prepares the reference) gives the reference the
  same hidden-size-based ZeRO-3 sizes as the policy.
* :func:`last_complete_checkpoint` finds the newest checkpoint that a dying rank did not interrupt.
* :func:`parameter_shards` reports how a model's parameters are held on this rank (ZeRO-3 partitions or whole
  tensors); the tests and ``scripts/shard_memory.py`` use it.

Bringing up the process group of a launched run is :mod:`trl_ipo.launch`'s job.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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


# ------------------------------------------------------------------------------------------------------ configs
def available_configs(kind: str = "deepspeed") -> dict[str, str]:
    """The packaged configs of ``kind`` (``"deepspeed"`` or ``"accelerate"``): short name -> absolute path."""
    table = _table(kind)
    return {name: str(CONFIG_DIR / filename) for name, filename in table.items()}


def resolve_config(name_or_path: str | os.PathLike, kind: str = "deepspeed") -> str:
    """Path of a DeepSpeed JSON or accelerate YAML, given a packaged short name or a file path.

    An existing file wins over a short name. ``"zero3"``, ``"zero3.json"`` and the packaged file name all name the
    packaged config. An inline JSON object (text starting with ``{``, as ``TrainingArguments.deepspeed`` accepts) is
    returned unchanged. Anything else raises ``FileNotFoundError`` listing the packaged names.
    """
    table = _table(kind)
    if name_or_path is None or not str(name_or_path).strip():
        raise ValueError(f"resolve_config: expected a {kind} config name or path, got {name_or_path!r}.")
    if isinstance(name_or_path, str) and name_or_path.lstrip().startswith("{"):
        return name_or_path
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
