"""The one place trl_ipo touches private names of TRL, transformers or accelerate; one small function each."""

from __future__ import annotations

import contextlib


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

    name = "_CHUNKED_LOGPROB_CHUNK_SIZE"
    if not isinstance(getattr(utils, name, None), int) or width < 1:
        yield
        return
    before = getattr(utils, name)
    setattr(utils, name, int(width))
    try:
        yield
    finally:
        setattr(utils, name, before)
