"""The one place that relies on how TRL and transformers work inside: each function is small, names the private
attribute or the internal call it depends on, and the versions it was checked against."""

from __future__ import annotations

import contextlib
import contextvars
import inspect

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
