"""Packed and prefix-shared preference batches (``IPOConfig.prefix_sharing`` / ``padding_free``).

Data flows one way through the package:

* :mod:`~trl_ipo.packed.layout`: the collated batch re-laid out (positions, segments, branches, index maps);
* :mod:`~trl_ipo.packed.masks`: what each attention backend takes for that layout;
* :mod:`~trl_ipo.packed.support`: which models may take it (refusals, the verified table, the self-check);
* :mod:`~trl_ipo.packed.forward`: the model's forward on the packed rows, scoring only completion positions;
* :mod:`~trl_ipo.packed.path`: :class:`PackedPath`, the one object the trainer calls.
"""

from .layout import CHOSEN, PAD, REJECTED, SHARED, PackedLayout, build_layout, scatter_scored
from .masks import additive_mask, allowed_mask, block_mask, layout_attention_mask, mask_mod
from .path import PackedPath, enabled
from .support import VERIFIED_MODEL_TYPES, check_packing_support

__all__ = [
    "CHOSEN",
    "PAD",
    "REJECTED",
    "SHARED",
    "VERIFIED_MODEL_TYPES",
    "PackedLayout",
    "PackedPath",
    "additive_mask",
    "allowed_mask",
    "block_mask",
    "build_layout",
    "check_packing_support",
    "enabled",
    "layout_attention_mask",
    "mask_mod",
    "scatter_scored",
]
