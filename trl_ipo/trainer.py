"""IPOTrainer: TRL's DPOTrainer with the exact IPO objective (soft labels, ties, analytic symmetric augmentation).

Only the loss seam is replaced. Everything else — model loading, PEFT, tokenisation, the reference model (and its
ZeRO-3 preparation), ``precompute_ref_log_probs``, evaluation, saving — is TRL's own code, with two mixins around it:
:class:`~trl_ipo.trainer_data.DatasetChecksMixin` (row checks, rows dropped by ``max_length`` counted) and
:class:`~trl_ipo.trainer_checkpoints.CheckpointingMixin` (complete checkpoints, safe rotation and resume).

``_compute_loss`` is the objective alone: inputs → per-token log-probs (TRL's fused LM head, or
:class:`trl_ipo.packed.PackedPath` for the packed layouts) → reference log-probs → :func:`trl_ipo.losses.ipo_objective`
→ :mod:`trl_ipo.metrics`. Private TRL names are reached only through :mod:`trl_ipo._compat`.
"""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer

from . import _compat, packed
from .callbacks import attach_margin_callback, concat_pair_records, require_wandb
from .config import IPOConfig, config_values, default_output_dir
from .data import PreferenceCollator
from .distributed import fill_zero3_auto_sizes
from .dpo_fields import check_sync_ref_model_peft
from .dropout import disable_dropout_if_asked
from .losses import F_DIVERGENCES, ipo_objective, sequence_logps
from .metrics import log_aux_loss, log_ipo_metrics, log_trl_metrics
from .model_card import IPO_PAPER, complete_model_card
from .ref_cache import precompute_ref_logps
from .run_args import save_args_record
from .trainer_checkpoints import CheckpointingMixin
from .trainer_data import DatasetChecksMixin, validate_datasets
from .validation import one_of

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", PreferenceCollator.key}


class IPOTrainer(CheckpointingMixin, DatasetChecksMixin, DPOTrainer):
    """Drop-in replacement for :class:`trl.DPOTrainer` that trains with IPO.

    Takes exactly the arguments of ``DPOTrainer``; ``args`` should be an :class:`IPOConfig` (a plain ``DPOConfig``
    is converted, keeping its values, with IPO defaults for the IPO fields).

    Per pair, with Δ the log-ratio margin and q the preference (1 for hard labels), the loss is
    ``(Δ − t/β)²`` with t = q − ½ (symmetric) or q — Azar et al. 2023 eq. 17, see :mod:`trl_ipo.losses`.

    Logged in addition to TRL's keys (``eval_`` prefixed in evaluation), in the units of ``loss_form``:
    ``ipo/delta`` (mean regressed margin), ``ipo/target`` (mean target), ``ipo/residual`` (mean margin − target),
    ``ipo/sq_error`` (mean squared residual, equal to the IPO loss term); see :mod:`trl_ipo.metrics`.
    """

    _tag_names = ["trl", "dpo", "ipo", "trl_ipo"]
    _name = "IPO"
    _paper = IPO_PAPER

    def __init__(
        self, model, ref_model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None, *a, **kw
    ):
        _compat.enable_trl_fused_head_without_triton()  # trl 1.15 on a CPU-only torch
        args = _as_ipo_config(args, model)
        check_sync_ref_model_peft(args, model, kw.get("peft_config"))  # TR-IPO needs a reference of its own
        one_of("f_divergence_type", args.f_divergence_type, F_DIVERGENCES)  # TRL would fail only at the first loss
        fill_zero3_auto_sizes(args, model)  # before TRL prepares the reference: same ZeRO-3 sizes as the policy
        require_wandb(args)  # report_to="wandb" without wandb: name the extra to install, before TRL fails
        self.dropped_rows: dict[str, int] = {}
        self.packed = packed.PackedPath(args) if packed.enabled(args) else None
        if self.packed is not None:  # refuse what cannot take the layout before anything is loaded or tokenised
            self.packed.check(model, "policy", kw.get("peft_config"))
            if ref_model is not None:
                self.packed.check(ref_model, "reference")
        self.row_checks = validate_datasets(args.preference_column, train_dataset, eval_dataset)
        if ref_model is None and _needs_in_memory_reference(model, args, kw.get("peft_config")):
            # TRL reloads the reference from the model's path; a model built in memory has none, so copy it.
            ref_model = copy.deepcopy(model).eval()
        with _padding_free_kept_from_trl(args):
            super().__init__(model, ref_model, args, data_collator, train_dataset, eval_dataset, *a, **kw)
        disable_dropout_if_asked(args, self.model, self.ref_model)  # also the functional dropout (trl_ipo.dropout)
        for loaded in (self.model, self.ref_model):  # MoE configs that name it num_local_experts (GraniteMoE, PhiMoE)
            if loaded is not None:
                _compat.alias_num_experts(packed.masks.text_config(loaded))
        if self.packed is not None:
            self._install_packed_path()
        if args.preference_column is not None:
            self.data_collator = PreferenceCollator(self.data_collator, args.preference_column)
        # Per-pair records since the last log, gathered from every rank (read by trl_ipo.callbacks).
        self.pair_records: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "eval": []}
        self._last_logged_pairs: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "eval": []}
        self._pairs_behind_log: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "eval": []}
        attach_margin_callback(self)  # margin histograms and worst-fit tables when report_to includes wandb

    # ------------------------------------------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        completion_mask = inputs["completion_mask"][..., 1:]
        outputs = self._policy_forward(model, inputs)  # per-token [2B, L-1], zero outside the completion
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_model = self.ref_model if self.ref_model is not None else self.model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(ref_model, inputs)
        preference = inputs.get(PreferenceCollator.key)
        terms = ipo_objective(
            outputs.log_probs,
            completion_mask,
            ref_chosen,
            ref_rejected,
            self.args,
            self.beta,
            preference,
            log_sum_sq_probs=outputs.log_sum_sq_probs,
            loss_types=self.loss_types,
            loss_weights=self.loss_weights,
        )
        loss = terms.loss
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            log_aux_loss(self, mode, outputs.aux_loss)
        log_trl_metrics(self, mode, inputs, outputs, completion_mask, terms)
        record = log_ipo_metrics(self, mode, terms.margin, terms.target, preference, terms.weights)
        self.pair_records[mode].append(record)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**self._model_kwargs(inputs))
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------- forward seams
    def _model_kwargs(self, inputs):
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        return model_kwargs

    def _policy_forward(self, model, inputs):
        """The policy's per-token outputs in the padded layout: ``log_probs``, ``entropy``, ``mean_logits`` and
        ``is_top1`` (``[2B, L-1]``), and ``aux_loss``. The packed layouts compute them on packed rows; they are
        scattered back by :class:`~trl_ipo.packed.PackedPath`."""
        if self.packed is not None:
            return self.packed.forward(
                model, inputs, dtype=self._compute_dtype(model), router_logits=self.aux_loss_enabled, role="policy"
            )
        seq_len = inputs["completion_mask"].size(1) - 1
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        outputs = model(**self._model_kwargs(inputs), labels=labels, fused_lm_head=True)
        for name in _compat.FUSED_FIELDS:
            value = getattr(outputs, name, None)
            if value is not None:  # prompt-learning PEFT prepends virtual tokens: keep the real positions
                setattr(outputs, name, value[:, -seq_len:])
        return outputs

    def _compute_dtype(self, model):
        """dtype of the additive mask: the autocast dtype, else the model's floating-point parameters'."""
        device_type = self.accelerator.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    def compute_ref_log_probs(self, model, inputs):
        """Reference ``(chosen, rejected)`` summed log-probs of a padded batch (training and precompute)."""
        inputs = {k: v for k, v in inputs.items() if k != PreferenceCollator.key}
        if self.packed is None:
            return super().compute_ref_log_probs(model, inputs)
        adapter_context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter_context = _compat.use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            _compat.disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter_context,
            self.accelerator.autocast(),
        ):
            per_token = self.packed.forward(model, inputs, dtype=self._compute_dtype(model), role="reference")
        return sequence_logps(per_token.log_probs, inputs["completion_mask"][..., 1:], self.args.ld_alpha).chunk(2)

    def _install_packed_path(self):
        """Check the loaded policy and reference take the layout, and wrap their forwards."""
        self.packed.check(self.model, "policy", getattr(self.model, "peft_config", None))
        if self.ref_model is not None:
            self.packed.check(self.ref_model, "reference")
        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
        reference = getattr(self.ref_model, "module", self.ref_model)
        self.packed.install(policy, reference, with_wpo=bool(getattr(self, "use_weighting", False)))

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL's version has every rank read a cache file that rank 0 wrote, which fails for an in-memory dataset on
        # more than one rank (each process gets its own temporary folder); see trl_ipo.ref_cache.
        if self.packed is not None:  # TRL precomputes inside __init__, before the packed forwards are installed
            self._install_packed_path()
        return precompute_ref_logps(self, dataset, name, batch_size)

    # --------------------------------------------------------------------------------------------------- logging
    def log(self, logs, start_time=None):
        mode = "train" if self.model.training else "eval"
        # Callbacks (on_log) read the pairs behind this log entry from `pairs_behind_log`; a log with no new pairs
        # (the summary after train(), or after evaluate()) has none, and `last_logged_pairs` keeps the latest ones.
        self._pairs_behind_log[mode] = self.pair_records[mode]
        self.pair_records[mode] = []
        if self._pairs_behind_log[mode]:
            self._last_logged_pairs[mode] = self._pairs_behind_log[mode]
        super().log(logs, start_time)

    def pairs_behind_log(self, mode: str = "train") -> dict[str, torch.Tensor]:
        """Per-pair ``delta``, ``target`` and ``preference`` (all ranks) behind the log entry being written now
        (for callbacks' ``on_log``); empty for a log that carries no new pairs."""
        return concat_pair_records(self._pairs_behind_log.get(mode) or [])

    def last_logged_pairs(self, mode: str = "train") -> dict[str, torch.Tensor]:
        """Per-pair ``delta``, ``target`` and ``preference`` (all ranks) behind the most recent log in ``mode`` that
        had any (still there after ``train()`` or ``evaluate()`` return)."""
        return concat_pair_records(self._last_logged_pairs.get(mode) or [])

    def _save(self, output_dir=None, state_dict=None):
        """Trainer's save, plus the JSON record of the arguments that tools read instead of the pickled
        ``training_args.bin`` (:mod:`trl_ipo.run_args`)."""
        super()._save(output_dir, state_dict)
        save_args_record(self, output_dir)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card (naming IPO and citing Azar et al. 2023) plus the IPO settings section."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        complete_model_card(self)


def _as_ipo_config(args, model) -> IPOConfig:
    if isinstance(args, IPOConfig):
        return args
    if args is None:
        return IPOConfig(output_dir=default_output_dir(model, "IPO"))
    # A DPOConfig's loss_type is DPO's: an IPOTrainer always trains IPO. Keep an IPO-compatible choice, else say so.
    loss_type = [args.loss_type] if isinstance(args.loss_type, str) else list(args.loss_type)
    if "ipo" in loss_type and set(loss_type) <= {"ipo", "sft"}:
        return IPOConfig(**config_values(args, IPOConfig))
    dropped = f"loss_type={loss_type!r}" + (f" and loss_weights={args.loss_weights!r}" if args.loss_weights else "")
    warnings.warn(
        f"{type(args).__name__} {dropped} replaced by IPOConfig's loss_type=['ipo'] (loss_weights=None): an "
        "IPOTrainer always trains IPO. Your config object still holds the old values; log trainer.args instead. "
        "Pass an IPOConfig (or loss_type='ipo') to silence this warning.",
        UserWarning,
        stacklevel=3,
    )
    return IPOConfig(**config_values(args, IPOConfig, skip={"loss_type", "loss_weights"}))


@contextlib.contextmanager
def _padding_free_kept_from_trl(args):
    """TRL (1.15, 1.16) switches its own ``padding_free`` off in ``DPOTrainer.__init__`` with a warning that does
    not apply here (the packed path is trl_ipo's): hide the flag while TRL initialises, then restore it."""
    padding_free = args.padding_free
    args.padding_free = False
    try:
        yield
    finally:
        args.padding_free = padding_free


def _needs_in_memory_reference(model, args, peft_config) -> bool:
    if isinstance(model, str) or peft_config is not None or args.precompute_ref_log_probs:
        return False
    if getattr(model, "peft_config", None):  # a PeftModel: the reference is the adapter-disabled model
        return False
    return not getattr(model.config, "_name_or_path", "")
