"""Model plumbing for packed / prefix-shared batches: validation, the attention mask per backend, the packed forward.

The layout itself (positions, masks, index maps) is :mod:`trl_ipo.packing`. Here:

* :func:`check_packing_support` refuses, before training, what cannot take the layout;
* :func:`install_packed_forward` wraps the forward TRL's fused LM head installed, so that
  ``model(..., packed_layout=layout)`` runs the backbone on the packed rows and scores only the completion positions
  with TRL's chunked log-prob kernel, inside the model's own forward (ZeRO-3 hooks and PEFT wrappers stay in charge);
* :func:`layout_attention_mask` builds what the model's attention implementation takes.
"""

from __future__ import annotations

import types

import torch

from .packing import PackedLayout, additive_mask, block_mask

DENSE_MASK_BACKENDS = ("sdpa", "eager")
FLASH_BACKENDS = ("flash_attention_2", "flash_attention_3")
_ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention")


def attn_implementation(model) -> str:
    config = _text_config(model)
    return getattr(config, "_attn_implementation", None) or "eager"


def _text_config(model):
    model = _unwrap(model)
    return model.config.get_text_config()


def _unwrap(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP, DeepSpeed engines
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return model


def check_packing_support(model, args, peft_config=None) -> None:
    """Raise a ValueError naming the setting, and what to use instead, when the model cannot take the layout."""
    sharing, packing = args.prefix_sharing, args.padding_free
    if not (sharing or packing):
        return
    flag = "prefix_sharing=True" if sharing else "padding_free=True"
    peft_type = getattr(peft_config, "peft_type", None)
    peft_configs = getattr(model, "peft_config", None) or {}
    if peft_type is None and peft_configs:
        peft_type = next(iter(peft_configs.values())).peft_type
    if peft_type is not None and str(getattr(peft_type, "value", peft_type)) in (
        "PROMPT_TUNING",
        "PREFIX_TUNING",
        "P_TUNING",
        "MULTITASK_PROMPT_TUNING",
        "ADAPTION_PROMPT",
        "CPT",
    ):
        raise ValueError(
            f"IPOConfig.{flag} does not work with PEFT prompt learning ({peft_type}): its virtual tokens are "
            "prepended to every row. Use a LoRA-style adapter, or set prefix_sharing=False and padding_free=False."
        )
    if isinstance(model, str):
        return  # checked again on the loaded model
    base = _unwrap(model)
    config = _text_config(model)
    attn = attn_implementation(model)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"IPOConfig.{flag} needs a decoder-only model; set it to False for encoder-decoder models.")
    if sharing and attn in FLASH_BACKENDS:
        raise ValueError(
            f"IPOConfig.prefix_sharing=True needs an attention mask, which the {attn} kernel cannot take. Load the "
            "model with attn_implementation='sdpa' or 'eager' (or 'flex_attention' on CUDA), or set "
            "prefix_sharing=False (padding_free=True alone works with FlashAttention)."
        )
    if attn not in DENSE_MASK_BACKENDS + FLASH_BACKENDS + ("flex_attention",):
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
    layer_types = getattr(config, "layer_types", None) or []
    odd = sorted({t for t in layer_types if t not in _ATTENTION_LAYER_TYPES})
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


def sliding_window_of(model) -> tuple[int | None, bool]:
    """(window, per_layer): the sliding window the layout must reproduce, and whether only some layers use it."""
    config = _text_config(model)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        if "sliding_attention" not in layer_types or window is None:
            return None, False
        return window, True
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None, False
    return window, False  # every layer slides (Mistral-style)


def layout_attention_mask(model, layout: PackedLayout, dtype: torch.dtype):
    """What to pass as ``attention_mask`` for the packed rows: a 4D mask, a flex BlockMask, a per-layer-type dict
    of either, or None for FlashAttention (which reads the segments from the position ids)."""
    attn = attn_implementation(model)
    if attn in FLASH_BACKENDS:
        return None
    window, per_layer = sliding_window_of(model)

    def build(w):
        return block_mask(layout, w) if attn == "flex_attention" else additive_mask(layout, dtype, w)

    if per_layer:
        return {"full_attention": build(None), "sliding_attention": build(window)}
    return build(window)


def _logit_transform(config) -> tuple[float | None, float]:
    """(final_logit_softcapping, logit_scale), read from the config by the rules of TRL's fused LM head."""
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        if scale is None:
            scale = getattr(config, name, None)
    if scale is None and getattr(config, "logits_scaling", None) is not None:
        scale = config.logits_scaling if config.model_type == "hyperclovax" else 1 / config.logits_scaling
    return softcap, 1.0 if scale is None else scale


def install_packed_forward(model, outputs=("log_probs",)) -> None:
    """Wrap ``model.forward`` (already patched by TRL's ``add_fused_lm_head``) with the packed path.

    ``model(..., packed_layout=layout)`` returns a TRL ``FusedCausalLMOutput`` whose per-token fields are the
    ``[N]`` scored tokens of ``layout`` (in ``layout.score_mask`` order); any other call is the previous forward.
    """
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

    if getattr(model, "_ipo_packed_forward", False):
        return
    previous = model.forward
    config = model.config.get_text_config()
    softcap, logit_scale = _logit_transform(config)
    chunk_size = 32768

    def forward(self, *args, packed_layout=None, **kwargs):
        if packed_layout is None:
            return previous(*args, **kwargs)
        for key in ("labels", "shift_labels", "fused_lm_head", "num_items_in_batch"):
            kwargs.pop(key, None)  # PEFT passes labels=None through; the layout carries the labels
        kwargs["use_cache"] = False
        router = bool(kwargs.get("output_router_logits") or getattr(config, "output_router_logits", False))
        if router:
            kwargs["output_router_logits"] = True
        backbone_out = self.base_model(*args, **kwargs)
        hidden = backbone_out.last_hidden_state
        hidden = hidden.reshape(-1, hidden.size(-1))[packed_layout.pred_index]
        lm_head = self.get_output_embeddings()
        hidden = hidden.to(lm_head.weight.device)
        labels = packed_layout.labels.to(hidden.device)
        with maybe_gather_lm_head_ctx(lm_head.weight, lm_head.bias):
            per_token = ChunkedLogProbFunction.apply(
                hidden, lm_head.weight, lm_head.bias, labels, 1.0, chunk_size, softcap, logit_scale, outputs
            )
        log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = per_token
        aux_loss = None
        if router:
            from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

            # Each packed token weighs as many padded-layout tokens as it stands for (a shared prompt token: 2),
            # so the load-balancing loss is the padded path's.
            aux_loss = load_balancing_loss_func(
                backbone_out.router_logits,
                config.num_experts,
                config.num_experts_per_tok,
                packed_layout.token_weights.to(hidden.device),
            )
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / max(labels.numel(), 1),
            log_probs=log_probs,
            entropy=entropy,
            log_sum_sq_probs=log_sum_sq_probs,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=None,
            aux_loss=aux_loss,
        )

    model.forward = types.MethodType(forward, model)
    model._ipo_packed_forward = True
