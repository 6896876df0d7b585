"""The one seam between trl_ipo and the private parts of TRL, transformers and accelerate.

Every read or call of a name that TRL or transformers do not document as public goes through one small function here,
each with the releases it was checked against. Elsewhere, private names appear only as the names of the trainer
methods trl_ipo overrides. When a new TRL or transformers release ships, this file is the list of what to check
(``bash scripts/compat.sh`` runs the checks).

Supported: trl 1.15.0 and 1.16.0; transformers 5.24 and 5.25.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect

import torch

# ----------------------------------------------------------------------------------------- trainer state (TRL)
# DPOTrainer.__init__ sets `_metrics` ({"train"|"eval": defaultdict(list)}), `_total_train_tokens` (int) and
# `_tp_size` (int). Checked: trl 1.15.0, 1.16.0.


def metrics(trainer, mode: str) -> dict[str, list]:
    """The per-mode lists TRL averages into each log entry (``trainer._metrics[mode]``)."""
    return trainer._metrics[mode]


def count_train_tokens(trainer, attention_mask_total: int) -> int:
    """Add a step's tokens (over ranks) to TRL's ``num_tokens`` counter, as TRL does; return the new total."""
    trainer._total_train_tokens += attention_mask_total // trainer._tp_size
    return trainer._total_train_tokens


def train_tokens(trainer) -> int:
    return trainer._total_train_tokens


# ---------------------------------------------------------------------------------------- Trainer (transformers)
# `_signature_columns` (list set by `_set_signature_columns_if_needed`) and `_get_output_dir(trial)`.
# Checked: transformers 5.24.0, 5.25.0.


def signature_columns(trainer) -> list[str]:
    return list(trainer._signature_columns or [])


def set_signature_columns(trainer, columns: list[str]) -> None:
    trainer._signature_columns = columns


# --------------------------------------------------------------------------------------------- TRL helpers
# Not private by name, but from TRL's internal modules (trl.trainer.utils, trl.models.utils, trl.kernels).
# Checked: trl 1.15.0, 1.16.0.


def disable_gradient_checkpointing(model, kwargs):
    from trl.models.utils import disable_gradient_checkpointing as disable

    return disable(model, kwargs)


def use_adapter(model, adapter_name):
    from trl.trainer.utils import use_adapter as use

    return use(model, adapter_name)


def fused_output(**fields):
    """TRL's ``FusedCausalLMOutput``, the fused LM head's return type."""
    from trl.trainer.utils import FusedCausalLMOutput

    return FusedCausalLMOutput(**fields)


def gather_lm_head(weight, bias):
    """Context in which a ZeRO-3-partitioned LM head is gathered (a no-op otherwise)."""
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    return maybe_gather_lm_head_ctx(weight, bias)


FUSED_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")  # the kernel's output order


def chunked_log_probs(hidden, weight, bias, labels, *, chunk_size, softcap, logit_scale, outputs):
    """TRL's chunked LM-head kernel on ``[N, H]`` states: the :data:`FUSED_FIELDS` tuple (``None`` for fields not
    in ``outputs``). Temperature 1. ``ChunkedLogProbFunction.apply`` takes its nine arguments positionally.

    trl 1.16.0 runs it on any device (a torch path off CUDA/XPU). trl 1.15.0's ``trl.kernels`` imports Triton at
    module level and has no torch path, so off CUDA/XPU (or without Triton) :class:`TorchChunkedLogProb` serves.
    """
    kernel = _chunked_kernel(hidden.device)
    return kernel.apply(hidden, weight, bias, labels, 1.0, chunk_size, softcap, logit_scale, outputs)


def _chunked_kernel(device):
    try:
        from trl.kernels import ChunkedLogProbFunction
    except ImportError:  # trl 1.15.0 without Triton
        return TorchChunkedLogProb
    if _trl_has_torch_kernel_path() or device.type in ("cuda", "xpu"):
        return ChunkedLogProbFunction
    return TorchChunkedLogProb


def _trl_has_torch_kernel_path() -> bool:
    """trl 1.16.0 added the torch fallback (``_forward_tile``) to its kernel module; trl 1.15.0 lacks it."""
    import trl.kernels.chunked_logprob as module

    return hasattr(module, "_forward_tile")


class TorchChunkedLogProb:
    """The contract of TRL's ``ChunkedLogProbFunction.apply`` in plain torch (autograd gives the backward).

    Per scored state h with label y, z = c·tanh(s·(Wh + b)/c)/T (no tanh without softcapping c; s the logit scale,
    T the temperature): log_probs = z_y − logsumexp(z); entropy = −Σ p log p; log_sum_sq_probs = log Σ p²;
    mean_logits = mean(z); is_top1 = (y is the first argmax of z). Computed in float32, in chunks of rows.
    """

    @staticmethod
    def apply(hidden, weight, bias, labels, temperature, chunk_size, softcap, logit_scale, outputs):
        parts = []
        for start in range(0, hidden.size(0), max(int(chunk_size), 1)):
            h, y = hidden[start : start + chunk_size], labels[start : start + chunk_size]
            z = torch.nn.functional.linear(h, weight, bias).float() * logit_scale
            if softcap is not None:
                z = softcap * torch.tanh(z / softcap)
            z = z / temperature
            log_p = torch.log_softmax(z, dim=-1)
            fields = {"log_probs": log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)}
            if "entropy" in outputs:
                fields["entropy"] = -(log_p.exp() * log_p).sum(-1)
            with torch.no_grad():
                if "log_sum_sq_probs" in outputs:
                    fields["log_sum_sq_probs"] = torch.logsumexp(2 * log_p, dim=-1)
                if "mean_logits" in outputs:
                    fields["mean_logits"] = z.mean(-1)
                if "is_top1" in outputs:
                    fields["is_top1"] = z.argmax(-1) == y
            parts.append(fields)
        if not parts:
            empty = hidden.new_zeros(0, dtype=torch.float32)
            parts = [{"log_probs": empty, **{k: empty for k in FUSED_FIELDS[1:] if k in outputs}}]
        return tuple(torch.cat([p[name] for p in parts]) if name in parts[0] else None for name in FUSED_FIELDS)


def enable_trl_fused_head_without_triton() -> None:
    """trl 1.15.0 sets ``trl.trainer.utils._ChunkedLogProbFunction`` to None when Triton cannot be imported, so its
    fused LM head (``model(..., fused_lm_head=True)``, used by DPOTrainer for the policy and the reference) fails on
    a CPU-only torch. Give it :class:`TorchChunkedLogProb` instead. trl 1.16.0 has its own torch path: no-op there.
    Also a no-op when Triton is present (1.15.0 then runs its kernels, on CUDA)."""
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils, "_ChunkedLogProbFunction", True) is None:
        trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb


def logit_transform(config) -> tuple[float | None, float]:
    """(final_logit_softcapping, logit_scale) by the rules of TRL's fused LM head (``add_fused_lm_head``)."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        if scale is None:
            scale = getattr(config, name, None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scale = config.logits_scaling if config.model_type == "hyperclovax" else 1 / config.logits_scaling
    return softcap, 1.0 if scale is None else scale


# ------------------------------------------------------------------------------------------- MoE (transformers)
# The load-balancing loss every MoE family shares (Mixtral's module). Checked: transformers 5.24.0, 5.25.0.


def num_experts(config) -> int:
    """Experts per MoE layer: ``num_experts`` (Qwen2-MoE, Qwen3-MoE, GPT-OSS) or ``num_local_experts`` (Mixtral,
    GraniteMoE, PhiMoE, GraniteMoeHybrid)."""
    value = getattr(config, "num_experts", None)
    return value if value is not None else config.num_local_experts


def alias_num_experts(config) -> None:
    """TRL's fused LM head reads ``text_config.num_experts``, which GraniteMoE-style configs name
    ``num_local_experts``: give such configs the alias so the padded path's router loss is computed, not a crash.
    Checked: trl 1.15.0, 1.16.0."""
    if getattr(config, "num_experts", None) is None and getattr(config, "num_local_experts", None) is not None:
        config.num_experts = config.num_local_experts


def load_balancing_loss(router_logits, config, token_weights: torch.Tensor) -> torch.Tensor:
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    return load_balancing_loss_func(router_logits, num_experts(config), config.num_experts_per_tok, token_weights)


# ------------------------------------------------------------------------------------------ recording stock TRL
def wrap_compute_loss(trainer, wrapper):
    """Route one trainer instance's ``DPOTrainer._compute_loss(model, inputs, return_outputs)`` through ``wrapper``;
    returns the original bound method. Checked: trl 1.15.0, 1.16.0 (same signature)."""
    original = trainer._compute_loss
    trainer._compute_loss = wrapper
    return original


def wandb_log_keys(logs: dict) -> dict:
    """Trainer log keys as transformers' WandbCallback names them (``train/…``, ``eval/…``).
    Checked: transformers 5.24.0, 5.25.0."""
    from transformers.integrations.integration_utils import rewrite_logs

    return rewrite_logs(logs)


# ------------------------------------------------------------------------------ precompute (TRL, datasets)
# DPOTrainer.__init__ sets `_precompute_model_hash` (str) and `_precompute_engine` (None until a DeepSpeed inference
# engine is built for the policy). Checked: trl 1.15.0, 1.16.0; datasets 5.2 (`Dataset._fingerprint`).


def precompute_cache_key(trainer, dataset) -> tuple:
    """What identifies a dataset's precomputed reference log-probs: the dataset, the model, ``ld_alpha``."""
    return dataset._fingerprint, trainer._precompute_model_hash, trainer.args.ld_alpha


def precompute_engine(trainer, build):
    """The DeepSpeed engine that computes the policy-as-reference log-probs, built once by ``build()``."""
    if trainer._precompute_engine is None:
        trainer._precompute_engine = build()
    return trainer._precompute_engine


# ---------------------------------------------------------------------------------- process state (accelerate)
# Checked: accelerate 1.15.0 (`PartialState._shared_state`, `AcceleratorState._reset_state`); deepspeed 0.19.8
# (`deepspeed.ops.__compatible_ops__`); torch 2.13 (DDP's `_ddp_params_and_buffers_to_ignore`).


def reset_accelerate_state(keep_if) -> bool:
    """Start a new Accelerator state; keep the process group when the current one is of ``keep_if``'s type.
    Returns whether it was kept."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    state = PartialState._shared_state
    reuse = bool(state) and state.get("distributed_type") == keep_if
    AcceleratorState._reset_state(reset_partial_state=not reuse)
    return reuse


def disable_deepspeed_op(name: str) -> None:
    """Mark a DeepSpeed op incompatible so DeepSpeed does not try to build it (e.g. the shm comm kernel)."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[name] = False


def ddp_ignore(model, names: list[str]) -> None:
    """Parameters and buffers DDP must not broadcast or reduce."""
    model._ddp_params_and_buffers_to_ignore = names


# ------------------------------------------------------------------------------- checkpoints (transformers, TRL)
_deferred_rotations: contextvars.ContextVar[list | None] = contextvars.ContextVar("trl_ipo_rotations", default=None)
_stock_rotate = None


def set_total_train_tokens(trainer, count: int) -> None:
    """Set the running total behind TRL's ``num_tokens`` metric (``DPOTrainer._total_train_tokens``), e.g. to the
    count a resumed checkpoint logged. Checked against TRL 1.15.0 and 1.16.0."""
    trainer._total_train_tokens = int(count)


def run_output_dir(trainer, trial) -> str:
    """The folder the ``checkpoint-N`` folders of this run (or hyperparameter-search trial) go to:
    ``Trainer._get_output_dir``. Checked against transformers 5.24.0 and 5.25.0 (TRL 1.15.0 and 1.16.0 do not
    override it)."""
    return trainer._get_output_dir(trial=trial)


@contextlib.contextmanager
def deferred_checkpoint_rotation():
    """Inside this block, the deletion of old checkpoints at the end of ``Trainer._save_checkpoint`` is recorded
    instead of done: yields a list that receives one ``dict`` of keyword arguments per call (``output_dir``,
    ``save_total_limit``, ``best_model_checkpoint``, ``use_mtime``, ``checkpoint_prefix``), for
    :func:`trl_ipo.checkpoints.rotate_checkpoints`. Outside the block (or in another thread), rotation is untouched.

    ``Trainer._save_checkpoint`` calls ``rotate_checkpoints`` (from ``transformers.trainer_utils``) through the name
    imported into ``transformers.trainer``; that name is replaced once by a wrapper that records while a block is
    open. Checked against transformers 5.24.0 and 5.25.0 (TRL 1.15.0 and 1.16.0). When that name is missing (another
    transformers), nothing is recorded and rotation happens where ``Trainer`` does it.
    """
    _install_rotation_hook()
    calls: list[dict] = []
    token = _deferred_rotations.set(calls)
    try:
        yield calls
    finally:
        _deferred_rotations.reset(token)


def rotation_hook_installed() -> bool:
    """Whether :func:`deferred_checkpoint_rotation` can defer rotation with this transformers."""
    import transformers.trainer as hf_trainer

    return getattr(hf_trainer, "rotate_checkpoints", None) is _record_or_rotate


def _install_rotation_hook() -> None:
    global _stock_rotate
    import transformers.trainer as hf_trainer

    current = getattr(hf_trainer, "rotate_checkpoints", None)
    if current is None or current is _record_or_rotate:
        return
    _stock_rotate = current
    hf_trainer.rotate_checkpoints = _record_or_rotate


def _record_or_rotate(*args, **kwargs):
    calls = _deferred_rotations.get()
    if calls is None:
        return _stock_rotate(*args, **kwargs)
    bound = inspect.signature(_stock_rotate).bind(*args, **kwargs)
    bound.apply_defaults()
    calls.append(dict(bound.arguments))
    return None


# ---------------------------------------------------------------------------------------- online DPO (TRL)
# OnlineDPOTrainer (trl.experimental.online_dpo). Checked: trl 1.15.0, 1.16.0.


def online_generate(trainer, model, prompts):
    """Two completions per prompt: ``(prompt_ids, prompt_mask, completion_ids, completion_mask)``.

    ``_generate`` returns these four in trl 1.15.0 and a fifth item (vision generation kwargs) in 1.16.0;
    ``_generate_vllm`` returns the four in both."""
    if trainer.args.use_vllm:
        return tuple(trainer._generate_vllm(prompts)[:4])
    return tuple(trainer._generate(model, prompts)[:4])


def online_tokenizer(trainer):
    """The tokenizer OnlineDPOTrainer keeps for generation (``_tokenizer``)."""
    return trainer._tokenizer


def online_generate_outputs() -> int:
    """How many values ``OnlineDPOTrainer._generate`` returns: 4 in trl 1.15.0, 5 in 1.16.0 (for overrides)."""
    from packaging.version import Version
    from trl import __version__

    return 5 if Version(__version__) >= Version("1.16.0") else 4


# ------------------------------------------------------------------------------------ fused LM head tiles (TRL)
_TILE_CONSTANT = "_CHUNKED_LOGPROB_CHUNK_SIZE"


def fused_lm_head_tile_width() -> int | None:
    """The vocabulary columns per tile of TRL's fused LM head now (None where TRL has no such constant).

    Reads ``trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE``; checked against TRL 1.15.0 and 1.16.0 (32768 in both).
    """
    from trl.trainer import utils

    width = getattr(utils, _TILE_CONSTANT, None)
    return width if isinstance(width, int) else None


@contextlib.contextmanager
def fused_lm_head_tile(width: int):
    """Within the block, TRL's fused LM head projects onto the vocabulary in tiles ``width`` columns wide.

    ``trl.trainer.utils.add_fused_lm_head`` tiles the vocabulary by the module constant
    ``_CHUNKED_LOGPROB_CHUNK_SIZE`` (32768), read at every call, and allocates a [tokens, 32768] float buffer for each
    forward and backward even when the vocabulary has a few hundred entries; for the lab's tiny models that buffer
    costs more than the model. With ``width`` ≥ the vocabulary size there is still one tile, so the log-probs and
    gradients are the same bits. Without the constant (another TRL) nothing changes. Checked against TRL 1.15.0 and
    1.16.0.
    """
    from trl.trainer import utils

    before = fused_lm_head_tile_width()
    if before is None or width < 1:
        yield
        return
    setattr(utils, _TILE_CONSTANT, int(width))
    try:
        yield
    finally:
        setattr(utils, _TILE_CONSTANT, before)
