"""The checkpoint side of :class:`~trl_ipo.IPOTrainer`: resume only from a complete checkpoint, mark each checkpoint
complete once every rank has saved it, and delete old ones only after that (see :mod:`trl_ipo.checkpoints`).

``Trainer._save_checkpoint`` saves, then deletes checkpoints beyond ``save_total_limit``. Here the deletion waits:

1. ``Trainer`` saves the folder (weights, optimizer, scheduler, RNG states, ``trainer_state.json``); its rotation is
   recorded, not run (:func:`trl_ipo._compat.deferred_checkpoint_rotation`);
2. the run's ``training_args.json`` is written into the folder if the save did not write it;
3. every rank waits for the others (a barrier);
4. the main process writes the marker, with each file's size and SHA-256;
5. the main process deletes old checkpoints, never the newest marked one.

A crash anywhere in 1–4 leaves the previous marked checkpoint on disk.
"""

from __future__ import annotations

import inspect
import os
import warnings

from accelerate.utils import broadcast_object_list

from . import _compat, checkpoints
from .run_args import ARGS_RECORD, write_args_record

_ROTATION_ARGS = frozenset(inspect.signature(checkpoints.rotate_checkpoints).parameters) - {"keep"}


class CheckpointingMixin:
    """Checkpoint methods of a ``transformers.Trainer`` subclass; list it before the trainer class it extends."""

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``, resuming only from a complete checkpoint (see :mod:`trl_ipo.checkpoints`).

        ``resume_from_checkpoint=True`` (or ``"true"``) picks the newest *complete* checkpoint of ``output_dir`` and
        warns about newer incomplete ones, naming the file that makes each incomplete; a path must be complete. The
        main process decides, every rank follows. A changed IPO loss setting warns, naming both values.
        """
        checkpoints.hashing_enabled()  # a bad TRL_IPO_CHECKPOINT_HASH stops here, not at the first save
        if checkpoints.parse_resume_flag(resume_from_checkpoint) is not None:
            resume_from_checkpoint = self._resolve_resume(resume_from_checkpoint)
        else:
            resume_from_checkpoint = None
        self.resumed_from = resume_from_checkpoint
        if resume_from_checkpoint is not None:  # TRL's `num_tokens` metric continues from the checkpoint
            _compat.set_total_train_tokens(self, checkpoints.logged_num_tokens(resume_from_checkpoint))
        output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        self._report_streamed_drops()  # trl_ipo.trainer_data
        return output

    def _resolve_resume(self, value):
        decision = [None]
        if self.accelerator.is_main_process:
            try:
                decision[0] = (
                    "ok",
                    *checkpoints.resolve_resume(
                        value,
                        self.args.output_dir,
                        self.args.allow_resume_without_optimizer,
                        self.args.world_size,
                        settings=checkpoints.loss_settings(self.args),
                    ),
                )
            except ValueError as err:
                decision[0] = ("error", str(err), [])
        decision = broadcast_object_list(decision, from_process=0)[0]
        status, result, messages = decision
        if status == "error":
            raise ValueError(result)
        if self.accelerator.is_main_process:
            checkpoints.warn_all(messages)
        return result

    def _save_checkpoint(self, model, trial):
        with _compat.deferred_checkpoint_rotation() as rotations:
            super()._save_checkpoint(model, trial)
        step = self.state.global_step
        folder = os.path.join(_compat.run_output_dir(self, trial), f"checkpoint-{step}")
        if self.args.should_save and os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, ARGS_RECORD)):
            write_args_record(self.args, folder)  # a save path that does not call _save (e.g. FSDP sharded)
        # Mark the folder complete only once every rank has written its part (see trl_ipo.checkpoints).
        self.accelerator.wait_for_everyone()
        marked = None
        if self.args.should_save and os.path.isdir(folder):
            checkpoints.write_marker(folder, step, self.args.world_size)
            marked = folder
        if self.args.should_save and not rotations and not _compat.rotation_hook_installed():
            warnings.warn(
                "This transformers version does not delete old checkpoints through the call trl_ipo defers: "
                "save_total_limit rotation ran before the checkpoint was marked complete.",
                UserWarning,
                stacklevel=2,
            )
        for rotation in rotations:
            self._rotate_checkpoints(rotation, keep=marked)

    def _rotate_checkpoints(self, rotation: dict, keep=None):
        """The rotation ``Trainer`` asked for while saving (its keyword arguments), run now that the checkpoint
        ``keep`` is marked; the newest marked checkpoint is never deleted (:func:`checkpoints.rotate_checkpoints`)."""
        options = {name: value for name, value in rotation.items() if name in _ROTATION_ARGS}
        return checkpoints.rotate_checkpoints(**options, keep=(keep,) if keep else ())
