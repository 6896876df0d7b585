"""The one place trl_ipo touches private names of TRL, transformers or accelerate; one small function each."""

from __future__ import annotations

import contextlib

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
