"""Which models may train on a packed layout: refusals before training, the verified table, the start-up self-check.

Nothing unverified trains silently. A model whose type is in :data:`VERIFIED_MODEL_TYPES` has had packed against
padded log-probs checked exact by ``tests/test_packed_support.py::test_verified_model_type_is_exact``. Any other
type is checked on its first batch, policy and reference alike (:func:`self_check`): the packed log-probs must equal
the padded ones within :data:`SELF_CHECK_TOLERANCE`, and a log line says the check ran and what it found.
"""

from __future__ import annotations

import logging

import torch

from .masks import FLASH_BACKENDS, MASK_BACKENDS, attn_implementation, text_config, unwrap

logger = logging.getLogger(__name__)

# model_type -> the family it stands for. Each is built tiny and checked by the test named in the module docstring.
VERIFIED_MODEL_TYPES = {
    "qwen2": "Qwen2 / Qwen2.5 (full and sliding-window layers)",
    "qwen3": "Qwen3",
    "qwen2_moe": "Qwen2-MoE",
    "qwen3_moe": "Qwen3-MoE",
    "llama": "Llama 2/3, SmolLM2",
    "mistral": "Mistral (sliding window)",
    "mixtral": "Mixtral",
    "gemma2": "Gemma 2 (alternating sliding layers, soft-capping)",
    "gemma3_text": "Gemma 3 text",
    "phi3": "Phi-3",
    "olmo2": "OLMo-2",
    "gpt_neox": "GPT-NeoX / Pythia",
    "gpt2": "GPT-2",
    "gptj": "GPT-J",
    "granite": "Granite",
    "granitemoe": "GraniteMoE (num_local_experts)",
    "cohere": "Cohere Command-R",
    "cohere2": "Cohere 2",
    "smollm3": "SmolLM3",
}

# Max |packed − padded| per-token log-prob allowed by the start-up self-check, by the model's compute dtype.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-8, torch.bfloat16: 5e-2, torch.float16: 1e-2}

# Batch keys the packed forward carries (everything else a model could take is refused by name).
CARRIED_INPUTS = frozenset(
    {"input_ids", "attention_mask", "completion_mask", "ref_chosen_logps", "ref_rejected_logps", "preference"}
)
_PROMPT_LEARNING = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT", "CPT")


def flag_name(args) -> str:
    return "prefix_sharing=True" if args.prefix_sharing else "padding_free=True"


def model_type(model) -> str:
    return getattr(text_config(model), "model_type", None) or type(unwrap(model)).__name__


def is_verified(model) -> bool:
    return model_type(model) in VERIFIED_MODEL_TYPES


def check_packing_support(model, args, peft_config=None, role: str = "model") -> None:
    """Raise a ValueError naming the setting, the model (``role``: policy, reference, …) and what to use instead,
    when the model cannot take the layout."""
    if not (args.prefix_sharing or args.padding_free):
        return
    flag = flag_name(args)
    _check_peft(peft_config, model, flag)
    if isinstance(model, str):
        return  # checked again on the loaded model
    base = unwrap(model)
    config = text_config(model)
    attn = attn_implementation(model)
    name = f"the {role} ({type(base).__name__}, model_type={model_type(model)!r})"
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"IPOConfig.{flag} needs a decoder-only model; set it to False for encoder-decoder models.")
    if base.config.get_text_config() is not base.config or hasattr(base.config, "vision_config"):
        raise ValueError(
            f"IPOConfig.{flag}: {name} is a multimodal model; the packed forward carries only token ids, so its "
            "image inputs (pixel_values, image_grid_thw, image_sizes, token_type_ids, ...) would be dropped. Set "
            "prefix_sharing=False and padding_free=False for this model."
        )
    if args.prefix_sharing and attn in FLASH_BACKENDS:
        raise ValueError(
            f"IPOConfig.prefix_sharing=True needs an attention mask, which the {attn} kernel cannot take. Load the "
            "model with attn_implementation='sdpa' or 'eager' (or 'flex_attention' on CUDA), or set "
            "prefix_sharing=False (padding_free=True alone works with FlashAttention)."
        )
    if attn not in MASK_BACKENDS:
        raise ValueError(
            f"IPOConfig.{flag} does not support attn_implementation={attn!r}. Use 'sdpa' or 'eager' (or "
            "'flex_attention' on CUDA), or set prefix_sharing=False and padding_free=False."
        )
    if not getattr(type(base), "_supports_attention_backend", False):
        raise ValueError(
            f"IPOConfig.{flag}: {type(base).__name__} does not build its attention masks through transformers' "
            "attention interface, so it would ignore the packed 4D mask. Set prefix_sharing=False and "
            "padding_free=False for this model."
        )
    odd = sorted(
        {t for t in getattr(config, "layer_types", None) or [] if t not in ("full_attention", "sliding_attention")}
    )
    if odd:
        raise ValueError(
            f"IPOConfig.{flag}: layers of type {odd} (not softmax attention over a mask) cannot take the packed "
            "layout. Set prefix_sharing=False and padding_free=False for this model."
        )
    if getattr(config, "attention_chunk_size", None):
        raise ValueError(
            f"IPOConfig.{flag}: chunked attention (attention_chunk_size) cannot take the packed layout. Set "
            "prefix_sharing=False and padding_free=False for this model."
        )


def _check_peft(peft_config, model, flag) -> None:
    peft_type = getattr(peft_config, "peft_type", None)
    peft_configs = getattr(model, "peft_config", None) or {}
    if peft_type is None and isinstance(peft_configs, dict) and peft_configs:
        peft_type = next(iter(peft_configs.values())).peft_type
    if peft_type is not None and str(getattr(peft_type, "value", peft_type)) in _PROMPT_LEARNING:
        raise ValueError(
            f"IPOConfig.{flag} does not work with PEFT prompt learning ({peft_type}): its virtual tokens are "
            "prepended to every row. Use a LoRA-style adapter, or set prefix_sharing=False and padding_free=False."
        )


def check_batch_inputs(inputs: dict, args) -> None:
    """Refuse a batch that carries a model input the packed forward would drop (images, token types, ...)."""
    extra = sorted(k for k in inputs if k not in CARRIED_INPUTS and inputs[k] is not None)
    if extra:
        raise ValueError(
            f"IPOConfig.{flag_name(args)}: the batch carries {extra}, which the packed forward does not pass to "
            "the model (it would train as if they were absent). Set prefix_sharing=False and padding_free=False."
        )


def self_check(model, padded_log_probs: torch.Tensor, packed_log_probs: torch.Tensor, role: str) -> float:
    """Compare one batch's per-token log-probs (``[2B, L-1]``, both layouts); raise when they differ by more than
    :data:`SELF_CHECK_TOLERANCE`, else log one line. Returns the largest difference."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    tolerance = SELF_CHECK_TOLERANCE.get(dtype, 1e-4)
    diff = (packed_log_probs.float() - padded_log_probs.float()).abs().max().item()
    kind = model_type(model)
    if not diff <= tolerance:
        raise ValueError(
            f"packed layout self-check failed for the {role} (model_type={kind!r}): packed and padded log-probs of "
            f"the first batch differ by up to {diff:.3g} (tolerance {tolerance:g} in {dtype}). This model type is "
            "not verified for prefix_sharing/padding_free; set both to False."
        )
    logger.warning(
        "packed layout self-check ran for the %s (model_type=%r is not in the verified table): packed and padded "
        "log-probs of the first batch agree to %.3g (tolerance %g).",
        role,
        kind,
        diff,
        tolerance,
    )
    return diff
