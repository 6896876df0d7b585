"""IPOTrainer: TRL's DPOTrainer with the exact IPO objective (soft labels, ties, analytic symmetric augmentation).

Only the loss seam is replaced. Everything else — model loading, PEFT, tokenisation, the reference model (and its
ZeRO-3 preparation), ``precompute_ref_log_probs``, evaluation, checkpoints — is TRL's own code.

The policy forward is TRL's fused LM head (per-token log-probs, never the full logits); the reference log-probs come
from ``DPOTrainer.compute_ref_log_probs`` or from the precomputed columns. The math is
:func:`trl_ipo.losses.ipo_loss`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings

import torch
from accelerate.utils import broadcast_object_list, is_peft_model
from datasets import Dataset, IterableDataset
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from . import checkpoints
from .callbacks import attach_margin_callback, concat_pair_records, require_wandb
from .config import IPOConfig, config_values, default_output_dir
from .data import PreferenceCollator, RowChecker, validate_preference_rows
from .distributed import fill_zero3_auto_sizes
from .dropout import disable_dropout_if_asked
from .errors import InputError
from .losses import (
    F_DIVERGENCES,
    f_divergence_scores,
    ipo_regression,
    reduce_logps,
    sequence_logps,
    wpo_pair_weights,
)
from .model_card import IPO_PAPER, complete_model_card
from .packed_forward import (
    DENSE_MASK_BACKENDS,
    attn_implementation,
    check_packing_support,
    install_packed_forward,
    layout_attention_mask,
)
from .packing import build_layout, scatter_scored
from .ref_cache import precompute_ref_logps
from .run_args import save_args_record

_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", PreferenceCollator.key}


class IPOTrainer(DPOTrainer):
    """Drop-in replacement for :class:`trl.DPOTrainer` that trains with IPO.

    Takes exactly the arguments of ``DPOTrainer``; ``args`` should be an :class:`IPOConfig` (a plain ``DPOConfig``
    is converted, keeping its values, with IPO defaults for the IPO fields).

    Per pair, with Δ the log-ratio margin and q the preference (1 for hard labels), the loss is
    ``(Δ − t/β)²`` with t = q − ½ (symmetric) or q — see :mod:`trl_ipo.losses`.

    Logged in addition to TRL's keys (``eval_`` prefixed in evaluation), in the units of ``loss_form``:
    ``ipo/delta`` (mean regressed margin), ``ipo/target`` (mean target), ``ipo/residual`` (mean margin − target),
    ``ipo/sq_error`` (mean squared residual, equal to the IPO loss term).
    """

    _tag_names = ["trl", "dpo", "ipo", "trl_ipo"]
    _name = "IPO"
    _paper = IPO_PAPER

    def __init__(
        self, model, ref_model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None, *a, **kw
    ):
        args = _as_ipo_config(args, model)
        if args.f_divergence_type not in F_DIVERGENCES:  # TRL would only fail at the first loss computation
            raise ValueError(f"f_divergence_type must be one of {list(F_DIVERGENCES)}, got {args.f_divergence_type!r}.")
        fill_zero3_auto_sizes(args, model)  # before TRL prepares the reference: same ZeRO-3 sizes as the policy
        require_wandb(args)  # report_to="wandb" without wandb: name the extra to install, before TRL fails
        self.dropped_rows: dict[str, int] = {}
        # Packed / prefix-shared layout (trl_ipo.packing). TRL 1.16 switches its own padding_free off with a warning
        # that does not apply here, so it is kept aside while TRL initialises.
        self._padding_free = bool(args.padding_free)
        self._packing_enabled = bool(args.prefix_sharing or args.padding_free)
        check_packing_support(model, args, kw.get("peft_config"))
        args.padding_free = False
        self.row_checks = _validate_datasets(args.preference_column, train_dataset, eval_dataset)
        if ref_model is None and _needs_in_memory_reference(model, args, kw.get("peft_config")):
            # TRL reloads the reference from the model's path; a model built in memory has none, so copy it.
            ref_model = copy.deepcopy(model).eval()
        try:
            super().__init__(model, ref_model, args, data_collator, train_dataset, eval_dataset, *a, **kw)
        finally:
            args.padding_free = self._padding_free
        disable_dropout_if_asked(args, self.model, self.ref_model)  # also the functional dropout (trl_ipo.dropout)
        if self._packing_enabled:
            self._ensure_packed_forward()
        if args.preference_column is not None:
            self.data_collator = PreferenceCollator(self.data_collator, args.preference_column)
        # Per-pair records since the last log, gathered from every rank (read by trl_ipo.callbacks).
        self.pair_records: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "eval": []}
        self._last_logged_pairs: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "eval": []}
        self._pairs_behind_log: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "eval": []}
        attach_margin_callback(self)  # margin histograms and worst-fit tables when report_to includes wandb

    # ----------------------------------------------------------------------------------------------- data plumbing
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        checks = self.__dict__.setdefault("row_checks", {})
        if dataset_name not in checks or checks[dataset_name].source is not dataset:  # e.g. evaluate(new_dataset)
            checks.update(_validate_datasets(args.preference_column, {dataset_name: dataset}))
        if isinstance(dataset, IterableDataset):
            return self._prepare_stream(dataset, processing_class, args, dataset_name, checks[dataset_name])
        before = len(dataset) if isinstance(dataset, Dataset) else None
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if before is not None and len(dataset) < before:
            dropped = before - len(dataset)
            self.dropped_rows[dataset_name] = dropped
            if dropped == before:
                raise InputError(_all_dropped(f"all {before} rows of the {dataset_name} dataset", args))
            warnings.warn(
                f"{dropped} of {before} rows of the {dataset_name} dataset were dropped because their prompt alone "
                f"is at least max_length={args.max_length} tokens (no completion token would be left). Raise "
                "max_length or shorten those prompts to keep them.",
                UserWarning,
                stacklevel=2,
            )
        return dataset

    def _prepare_stream(self, dataset, processing_class, args, dataset_name, checker):
        """A streamed dataset: rows checked as they arrive (by stream index), rows dropped by length counted."""
        dataset = dataset.map(checker.check_streamed, with_indices=True)
        if args.max_length is None or args.truncation_mode != "keep_start":
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            checker.reset()
            return dataset
        # TRL drops rows whose prompt fills max_length with a silent filter; filter here instead, counting them.
        unfiltered = copy.copy(args)
        unfiltered.max_length = None
        dataset = super()._prepare_dataset(dataset, processing_class, unfiltered, dataset_name)
        counter = _StreamDropCounter(self.dropped_rows, dataset_name, args.max_length)
        dataset = dataset.filter(counter, with_indices=True)
        with warnings.catch_warnings():  # the peek below re-reads the start of the stream; training warns again
            warnings.simplefilter("ignore")
            first = next(iter(dataset), None)
        if first is None:
            raise InputError(_all_dropped(f"all {counter.seen} rows of the streamed {dataset_name} dataset", args))
        counter.reset()
        checker.reset()
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        column = self.args.preference_column
        if column is not None and column not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, column]

    # ------------------------------------------------------------------------------------------------- checkpoints
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``, resuming only from a complete checkpoint (see :mod:`trl_ipo.checkpoints`).

        ``resume_from_checkpoint=True`` (or ``"true"``) picks the newest *complete* checkpoint of ``output_dir`` and
        warns about newer incomplete ones; a path must be complete. The main process decides, every rank follows.
        """
        if checkpoints.parse_resume_flag(resume_from_checkpoint) is not None:
            resume_from_checkpoint = self._resolve_resume(resume_from_checkpoint)
        else:
            resume_from_checkpoint = None
        self.resumed_from = resume_from_checkpoint
        if resume_from_checkpoint is not None:  # TRL's `num_tokens` metric continues from the checkpoint
            self._total_train_tokens = checkpoints.logged_num_tokens(resume_from_checkpoint)
        output = super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        dropped = self.dropped_rows.get("train", 0)
        if dropped and isinstance(self.train_dataset, IterableDataset):  # in-memory drops were reported up front
            warnings.warn(
                f"{dropped} rows of the streamed train dataset were dropped during training because their prompt "
                f"alone is at least max_length={self.args.max_length} tokens (trainer.dropped_rows['train']).",
                UserWarning,
                stacklevel=2,
            )
        return output

    def _resolve_resume(self, value):
        decision = [None]
        if self.accelerator.is_main_process:
            try:
                decision[0] = (
                    "ok",
                    *checkpoints.resolve_resume(
                        value, self.args.output_dir, self.args.allow_resume_without_optimizer, self.args.world_size
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
        super()._save_checkpoint(model, trial)
        # Mark the folder complete only once every rank has written its part (see trl_ipo.checkpoints).
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            if os.path.isdir(folder):
                checkpoints.write_marker(folder, self.state.global_step, self.args.world_size)

    # ------------------------------------------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        args = self.args
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        outputs = self._policy_forward(model, inputs)
        per_token_logps = outputs.log_probs  # [2B, L-1], zero outside the completion
        # TRL's loss modifiers act from here on, on the per-token log-probs and masks (see trl_ipo.losses).
        chosen_logps, rejected_logps = sequence_logps(per_token_logps, shift_mask, args.ld_alpha).chunk(2, dim=0)

        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_model = self.ref_model if self.ref_model is not None else self.model
            ref_chosen_logps, ref_rejected_logps = self.compute_ref_log_probs(ref_model, inputs)

        # Summed log-ratios (TRL's rewards are β times these) and the ones IPO regresses (per logp_reduction).
        chosen_logratios = chosen_logps - ref_chosen_logps
        rejected_logratios = rejected_logps - ref_rejected_logps
        num_chosen, num_rejected = shift_mask.sum(dim=1).chunk(2, dim=0)
        f_div, f_alpha, reduction = args.f_divergence_type, args.f_alpha_divergence_coef, args.logp_reduction
        chosen_rho = reduce_logps(f_divergence_scores(chosen_logratios, f_div, f_alpha), num_chosen, reduction)
        rejected_rho = reduce_logps(f_divergence_scores(rejected_logratios, f_div, f_alpha), num_rejected, reduction)
        preference = inputs.get(PreferenceCollator.key)
        margin, target = ipo_regression(
            chosen_rho, rejected_rho, self.beta, preference, symmetric=args.symmetric, loss_form=args.loss_form
        )
        per_pair_loss = (margin - target) ** 2
        weights = None
        if args.use_weighting:  # WPO: detached per-pair weights on the IPO term (not on the "sft" term)
            weights = wpo_pair_weights(per_token_logps, outputs.log_sum_sq_probs, shift_mask)
            per_pair_loss = per_pair_loss * weights

        loss = 0.0
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "ipo":
                loss = loss + weight * per_pair_loss.mean()
            else:  # "sft": TRL's NLL on the chosen completion tokens
                chosen_mask = shift_mask.chunk(2, dim=0)[0].bool()
                loss = loss + weight * -per_token_logps.chunk(2, dim=0)[0][chosen_mask].mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item())

        self._log_trl_metrics(
            mode, inputs, outputs, shift_mask, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios
        )
        self._log_ipo_metrics(mode, margin.detach(), target.detach(), preference, weights)

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
        ``is_top1`` of shape ``[2B, L-1]`` (zero outside the completions), and ``aux_loss``. With ``prefix_sharing``
        or ``padding_free`` the forward runs on the packed layout and its results are scattered back here."""
        if self._packing_enabled:
            return self._packed_forward(model, inputs, with_metrics=True)
        seq_len = inputs["completion_mask"].size(1) - 1
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        outputs = model(**self._model_kwargs(inputs), labels=labels, fused_lm_head=True)
        for name in ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"):
            value = getattr(outputs, name, None)
            if value is not None:  # prompt-learning PEFT prepends virtual tokens: keep the real positions
                setattr(outputs, name, value[:, -seq_len:])
        return outputs

    def _packed_forward(self, model, inputs, with_metrics):
        layout = self._build_layout(inputs)
        device = inputs["input_ids"].device
        dtype = self._compute_dtype(model)
        packed_kwargs = {
            "input_ids": layout.input_ids,
            "position_ids": layout.position_ids,
            "attention_mask": layout_attention_mask(model, layout, dtype),
            "use_cache": False,
        }
        if self.aux_loss_enabled and with_metrics:
            packed_kwargs["output_router_logits"] = True
        outputs = model(**packed_kwargs, packed_layout=layout)
        score_mask = layout.score_mask.to(device)
        for name in ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"):
            value = getattr(outputs, name)
            if value is not None:
                setattr(outputs, name, scatter_scored(value, score_mask))
        return outputs

    def _build_layout(self, inputs):
        args = self.args
        # Dense masks cost rows × length²: pack rows no longer than the longest segment. Flex and FlashAttention
        # skip what the segments hide, so everything goes into one row.
        capacity = 0 if attn_implementation(self.model) in DENSE_MASK_BACKENDS else None
        layout = build_layout(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["completion_mask"],
            prefix_sharing=args.prefix_sharing,
            padding_free=self._padding_free,
            capacity=capacity,
        )
        if layout.unshared_pairs:
            self._warn_unshared(layout.unshared_pairs)
        return layout.to(inputs["input_ids"].device)

    def _compute_dtype(self, model):
        """dtype of the additive mask: the autocast dtype, else the model's floating-point parameters'."""
        device_type = self.accelerator.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    def compute_ref_log_probs(self, model, inputs):
        """Reference ``(chosen, rejected)`` summed log-probs of a padded batch (training and precompute)."""
        inputs = {k: v for k, v in inputs.items() if k != PreferenceCollator.key}
        if not self._packing_enabled:
            return super().compute_ref_log_probs(model, inputs)
        self._ensure_packed_forward()
        adapter_context = contextlib.nullcontext()
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter_context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            adapter_context,
            self.accelerator.autocast(),
        ):
            per_token = self._packed_forward(model, inputs, with_metrics=False).log_probs
        return sequence_logps(per_token, inputs["completion_mask"][..., 1:], self.args.ld_alpha).chunk(2, dim=0)

    def _ensure_packed_forward(self):
        """Check the model takes the layout and wrap the policy's and the reference's forwards (once)."""
        if getattr(self, "_packed_forward_ready", False):
            return
        check_packing_support(self.model, self.args, getattr(self.model, "peft_config", None))
        outputs = ("log_probs", "entropy", "mean_logits", "is_top1")
        if getattr(self, "use_weighting", False):
            outputs += ("log_sum_sq_probs",)
        policy = self.model.get_base_model() if is_peft_model(self.model) else self.model
        install_packed_forward(policy, outputs=outputs)
        if self.ref_model is not None:
            install_packed_forward(getattr(self.ref_model, "module", self.ref_model))
        self._packed_forward_ready = True

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # TRL's version has every rank read a cache file that rank 0 wrote, which fails for an in-memory dataset on
        # more than one rank (each process gets its own temporary folder); see trl_ipo.ref_cache.
        if self._packing_enabled:
            self._ensure_packed_forward()
        return precompute_ref_logps(self, dataset, name, batch_size)

    def _warn_unshared(self, count):
        warnings.warn(
            f"prefix_sharing: {count} pair(s) in this batch carry different prompt tokens in their chosen and "
            "rejected rows (truncation_mode='keep_end' cut the prompt differently), so their prompt is computed "
            "once per completion for them; their loss is unchanged.",
            UserWarning,
            stacklevel=3,
        )

    # --------------------------------------------------------------------------------------------------- metrics
    def _log_ipo_metrics(self, mode, margin, target, preference, weights=None):
        gather = self.accelerator.gather
        margin, target = gather(margin).float(), gather(target).float()
        residual = margin - target
        metrics = self._metrics[mode]
        metrics["ipo/delta"].append(margin.mean().item())
        metrics["ipo/target"].append(target.mean().item())
        metrics["ipo/residual"].append(residual.mean().item())
        metrics["ipo/sq_error"].append((residual**2).mean().item())
        if weights is not None:  # use_weighting: the IPO term is the weighted mean, sq_error the unweighted one
            metrics["ipo/wpo_weight"].append(gather(weights.detach()).float().mean().item())
        q = torch.ones_like(margin) if preference is None else gather(preference.to(margin.device)).float()
        self.pair_records[mode].append({"delta": margin.cpu(), "target": target.cpu(), "preference": q.cpu()})

    def _log_trl_metrics(
        self, mode, inputs, outputs, shift_mask, chosen_logps, rejected_logps, chosen_logratios, rejected_logratios
    ):
        """The metrics stock DPOTrainer logs, with the same keys and definitions."""
        gather, gather_m = self.accelerator.gather, self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        seq_len = shift_mask.size(1)
        mask = shift_mask.bool()
        chosen_mask, rejected_mask = mask.chunk(2, dim=0)

        entropy_sum = gather_m((outputs.entropy[:, -seq_len:].detach() * mask).sum()).sum()
        total_tokens = gather_m(mask.sum()).sum()
        metrics["entropy"].append((entropy_sum / total_tokens).item() if total_tokens > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather_m(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

        mean_logits = outputs.mean_logits[:, -seq_len:].detach()
        chosen_logits, rejected_logits = mean_logits.chunk(2, dim=0)
        for name, logits, m in (("chosen", chosen_logits, chosen_mask), ("rejected", rejected_logits, rejected_mask)):
            total = gather_m(logits[m].sum()).sum().item()
            count = gather_m(m.sum()).sum().item()
            metrics[f"logits/{name}"].append(total / count if count > 0 else 0.0)

        correct = gather_m((outputs.is_top1[:, -seq_len:].chunk(2, dim=0)[0] & chosen_mask).sum()).sum()
        count = gather_m(chosen_mask.sum()).sum()
        metrics["mean_token_accuracy"].append((correct / count).item() if count > 0 else 0.0)

        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())

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


def _needs_in_memory_reference(model, args, peft_config) -> bool:
    if isinstance(model, str) or peft_config is not None or args.precompute_ref_log_probs:
        return False
    if getattr(model, "peft_config", None):  # a PeftModel: the reference is the adapter-disabled model
        return False
    return not getattr(model.config, "_name_or_path", "")


def _validate_datasets(column, train_dataset, eval_dataset=None) -> dict:
    """Check the datasets before TRL reads them: ``{name: RowChecker}``.

    In-memory datasets are checked row by row now (warnings for signal-free pairs included). Streamed ones must
    yield a first row; their rows are checked as they arrive (see :meth:`IPOTrainer._prepare_stream`).
    """
    named = dict(train_dataset) if isinstance(train_dataset, dict) else {"train": train_dataset}
    if isinstance(eval_dataset, dict):
        named.update(eval_dataset)
    elif eval_dataset is not None:
        named["eval"] = eval_dataset
    checks = {}
    for name, dataset in named.items():
        if dataset is None:
            continue
        if isinstance(dataset, IterableDataset):
            if next(iter(dataset), None) is None:
                raise InputError(f"the streamed {name} dataset has no rows.")
            checker = RowChecker(name, column, streamed=True)
        elif isinstance(dataset, Dataset):
            checker = validate_preference_rows(dataset, name, column)
        else:  # a torch Dataset or a list of rows: TRL's own checks apply
            continue
        checker.source = dataset
        checks[name] = checker
    return checks


def _all_dropped(rows: str, args) -> str:
    return (
        f"{rows} were dropped because their prompt alone is at least max_length={args.max_length} tokens, leaving "
        "nothing to train on. Raise max_length or shorten the prompts."
    )


class _StreamDropCounter:
    """``IterableDataset.filter`` predicate: keep rows whose prompt fits; count (and warn once about) the others."""

    def __init__(self, dropped_rows: dict, dataset_name: str, max_length: int):
        self.dropped_rows, self.name, self.max_length = dropped_rows, dataset_name, max_length
        self.seen = 0

    def reset(self):
        self.seen = 0
        self.dropped_rows.pop(self.name, None)

    def __call__(self, example, index) -> bool:
        self.seen += 1
        if len(example["prompt_ids"]) < self.max_length:
            return True
        self.dropped_rows[self.name] = self.dropped_rows.get(self.name, 0) + 1
        if self.dropped_rows[self.name] == 1:
            warnings.warn(
                f"row {index} of the streamed {self.name} dataset was dropped because its prompt alone is at least "
                f"max_length={self.max_length} tokens (no completion token would be left); further drops are counted "
                f"in trainer.dropped_rows[{self.name!r}]. Raise max_length or shorten those prompts to keep them.",
                UserWarning,
                stacklevel=2,
            )
        return False
