"""What each attention implementation takes for a packed layout: a dense 4D mask, a flex ``BlockMask``, or nothing.

Query q may attend to key k when both lie in the same segment, k is not after q, and k is a shared (prompt) token or
on q's own branch; sliding-window layers add ``pos_q - pos_k < window``. This is the padded layout's causal mask,
token for token (see :mod:`trl_ipo.packed.layout`). Everything here is built on the layout's device.
"""

from __future__ import annotations

import torch

from .layout import SHARED, PackedLayout

DENSE_MASK_BACKENDS = ("sdpa", "eager")
FLASH_BACKENDS = ("flash_attention_2", "flash_attention_3")
MASK_BACKENDS = DENSE_MASK_BACKENDS + FLASH_BACKENDS + ("flex_attention",)


def _visible(seg_q, seg_k, branch_q, branch_k, pos_q, pos_k, idx_q, idx_k, sliding_window):
    """Whether query q may attend to key k (element-wise; works on broadcast tensors and inside a flex mask_mod)."""
    allowed = (seg_q == seg_k) & (seg_k >= 0) & (idx_k <= idx_q) & ((branch_k == SHARED) | (branch_k == branch_q))
    if sliding_window is not None:
        allowed = allowed & (pos_q - pos_k < sliding_window)
    return allowed


def allowed_mask(layout: PackedLayout, sliding_window: int | None = None) -> torch.Tensor:
    """``[R, 1, T, T]`` bool, True where a query may attend to a key. Padding queries see only themselves."""
    seg, branch, pos = layout.segment_ids, layout.branch_ids, layout.position_ids
    idx = torch.arange(seg.size(1), device=seg.device)
    allowed = _visible(
        seg[:, :, None],
        seg[:, None, :],
        branch[:, :, None],
        branch[:, None, :],
        pos[:, :, None],
        pos[:, None, :],
        idx[None, :, None],
        idx[None, None, :],
        sliding_window,
    )
    pad_diagonal = (seg[:, :, None] < 0) & (idx[None, :, None] == idx[None, None, :])
    return (allowed | pad_diagonal)[:, None]


def additive_mask(layout: PackedLayout, dtype: torch.dtype, sliding_window: int | None = None) -> torch.Tensor:
    """``[R, 1, T, T]`` float mask for sdpa and eager attention: 0 where visible, the dtype's minimum elsewhere."""
    allowed = allowed_mask(layout, sliding_window)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def mask_mod(layout: PackedLayout, sliding_window: int | None = None):
    """A flex-attention ``mask_mod(b, h, q, kv)`` for the layout, reading the id tensors on their device."""
    seg, branch, pos = layout.segment_ids, layout.branch_ids, layout.position_ids

    def visible(b, h, q, kv):
        seg_q = seg[b, q]
        allowed = _visible(seg_q, seg[b, kv], branch[b, q], branch[b, kv], pos[b, q], pos[b, kv], q, kv, sliding_window)
        return allowed | ((seg_q < 0) & (q == kv))

    return visible


def block_mask(layout: PackedLayout, sliding_window: int | None = None):
    """A flex-attention ``BlockMask`` built on the layout's device from its segment and branch ids."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = layout.input_ids.shape
    device = layout.segment_ids.device
    return create_block_mask(mask_mod(layout, sliding_window), rows, None, length, length, device=device)


def unwrap(model):
    """The model inside DDP / DeepSpeed engines and PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def text_config(model):
    """The language model's config, through DDP / DeepSpeed engines and PEFT wrappers."""
    return unwrap(model).config.get_text_config()


def attn_implementation(model) -> str:
    return getattr(text_config(model), "_attn_implementation", None) or "eager"


def sliding_window_of(model) -> tuple[int | None, bool]:
    """(window, per_layer): the sliding window the layout must reproduce, and whether only some layers use it."""
    config = text_config(model)
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        if "sliding_attention" not in layer_types or window is None:
            return None, False
        return window, True
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None, False
    return window, False  # every layer slides (Mistral-style)


def row_capacity(model) -> int | None:
    """Most tokens per packed row: dense masks cost rows × length², so rows no longer than the longest segment
    group (0); flex and FlashAttention skip what the segments hide, so everything goes into one row (None)."""
    return 0 if attn_implementation(model) in DENSE_MASK_BACKENDS else None


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
