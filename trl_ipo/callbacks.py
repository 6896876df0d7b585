"""Margin dashboards on Weights & Biases: per-pair Δ and residual histograms, worst-fit tables, the IPO run config.

IPO regresses, per pair, the log-ratio margin

    Δ = ρ(y_w) − ρ(y_l),   ρ(y) = log π_θ(y|x) − log π_ref(y|x)   (per-token mean or sum, ``logp_reduction``)

onto the target t/β with t = q − ½ (symmetric) or q (Azar et al. 2023, eq. 16–17; docs/theory.md). The averages
(``ipo/delta``, ``ipo/target``, ``ipo/residual``) hide how the pairs spread around the target, so
:class:`IPOMarginCallback` adds, on the main process only:

* at each logging step, ``wandb.Histogram`` s of the per-pair Δ and residual Δ − target of every pair seen (on all
  ranks) since the previous log: ``train/ipo/delta_hist``, ``train/ipo/residual_hist`` (``eval/…`` in evaluation);
* at each evaluation, ``eval/ipo/worst_fit``: a ``wandb.Table`` of the evaluation pairs with the largest
  |residual| (prompt, chosen, rejected, Δ, target, residual, q);
* the IPO settings (beta, loss_form, symmetric, logp_reduction, preference_column) in the run config, under ``ipo``.

With :class:`trl_ipo.IPOTrainer` the callback is added automatically when ``report_to`` includes ``"wandb"``; it
reads the per-pair records the trainer keeps (``IPOTrainer.pairs_behind_log``). With a stock ``trl.DPOTrainer``
add it yourself, ``trainer.add_callback(IPOMarginCallback(trainer))``: it then measures Δ from the trainer's own
forward passes (the policy's and the reference's per-token log-probs, captured with forward hooks; no extra
forward) and also adds the scalar ``ipo/*`` means to the logs, so DPO and IPO runs fill the same panels.
"""

from __future__ import annotations

import logging
import warnings

import torch
from transformers import TrainerCallback

from . import _compat
from .config import ipo_setting_names
from .losses import LOGP_REDUCTIONS, LOSS_FORMS, ipo_regression, reduce_logps
from .metric_keys import IPO_KEYS
from .metrics import ipo_statistics
from .validation import one_of

logger = logging.getLogger(__name__)

WANDB_INSTALL_HINT = "pip install trl_ipo[wandb]"
IPO_SETTINGS = ipo_setting_names(loss_weights=False)
_MARGINS_KEY = "rewards/margins"  # logged by IPOTrainer and DPOTrainer alike; locates the metric prefix of a log


# ----------------------------------------------------------------------------------------------------- wandb needed
def wandb_requested(args) -> bool:
    """Whether a ``TrainingArguments``' ``report_to`` asks for Weights & Biases."""
    report_to = getattr(args, "report_to", None) or []
    if isinstance(report_to, str):
        report_to = [report_to]
    return "wandb" in report_to


def require_wandb(args=None):
    """Import and return ``wandb``; if it is missing raise an ``ImportError`` naming the extra to install.

    With ``args`` given, nothing is imported (and ``None`` returned) unless ``args.report_to`` includes ``"wandb"``.
    """
    if args is not None and not wandb_requested(args):
        return None
    try:
        import wandb
    except ImportError as err:
        raise ImportError(
            "report_to includes 'wandb' but the wandb package is not installed. Install the extra with "
            f"`{WANDB_INSTALL_HINT}` (or drop 'wandb' from report_to)."
        ) from err
    return wandb


def attach_margin_callback(trainer) -> None:
    """Add an :class:`IPOMarginCallback` to ``trainer`` when its ``report_to`` includes wandb and none is there."""
    if not wandb_requested(trainer.args):
        return
    if any(isinstance(cb, IPOMarginCallback) for cb in trainer.callback_handler.callbacks):
        return
    trainer.add_callback(IPOMarginCallback(trainer))


# ------------------------------------------------------------------------------------------------ per-pair math
def worst_fit(delta: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` pairs with the largest |Δ − target|, largest first (ties: lower index first)."""
    residual = (delta - target).abs()
    return torch.sort(-residual, stable=True).indices[:k]


def pair_texts(row: dict, tokenizer=None) -> tuple[str, str, str]:
    """Prompt, chosen and rejected of a dataset row as text.

    Text columns are used as they are, less the end-of-sequence token TRL appends to completions; conversational
    ones (lists of messages) are rendered ``role: content`` per line; without text columns the tokenised
    ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` are decoded.
    """
    eos = getattr(tokenizer, "eos_token", None) if tokenizer is not None else None
    texts = []
    for name in ("prompt", "chosen", "rejected"):
        value = row.get(name)
        if value is None and tokenizer is not None and row.get(f"{name}_ids") is not None:
            value = tokenizer.decode(row[f"{name}_ids"])
        text = _as_text(value)
        if name != "prompt" and isinstance(eos, str) and eos and text.endswith(eos):
            text = text[: -len(eos)]
        texts.append(text)
    return texts[0], texts[1], texts[2]


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(f"{m.get('role', '?')}: {_as_text(m['content'])}" for m in value)
    return str(value)


# ------------------------------------------------------------------------------------ margins from a stock DPOTrainer
class DPOMarginRecorder:
    """Per-pair Δ and IPO target from a stock ``trl.DPOTrainer``'s own forward passes, gathered over ranks.

    ``trainer._compute_loss`` is wrapped (on this trainer instance only): while it runs, forward hooks on the
    policy (and the reference model, when separate) catch the per-token log-probs of the fused LM head forwards;
    the first is the policy's, the second the reference's (or the precomputed ``ref_*_logps`` columns). From them

        ρ_w, ρ_l = reduce(Σ_t log π_θ − log π_ref)   (``logp_reduction``: per-token mean or sum)
        (Δ, target) = ipo_regression(ρ_w, ρ_l, β, symmetric, loss_form)   (hard labels, q = 1)

    i.e. the margin an IPOTrainer with these settings would regress, and the target it would regress it onto.
    With ``loss_form="scaled"`` and ``logp_reduction="sum"``, Δ is TRL's per-pair ``rewards/margins``.
    """

    def __init__(self, trainer, logp_reduction: str = "mean", loss_form: str = "paper", symmetric: bool = True):
        one_of("logp_reduction", logp_reduction, LOGP_REDUCTIONS)
        one_of("loss_form", loss_form, LOSS_FORMS)
        self.trainer = trainer
        self.logp_reduction, self.loss_form, self.symmetric = logp_reduction, loss_form, bool(symmetric)
        self.pending: dict[str, list[dict[str, torch.Tensor]]] = {"train": [], "eval": []}
        self._compute_loss = _compat.wrap_compute_loss(trainer, self._recording_compute_loss)

    def take(self, mode: str) -> dict[str, torch.Tensor]:
        """The pairs recorded in ``mode`` since the previous ``take`` (all ranks), as concatenated tensors.

        ``batch`` numbers the (gathered) batch each pair came from, for per-batch means as TRL logs them.
        """
        records, self.pending[mode] = self.pending[mode], []
        for number, record in enumerate(records):
            record["batch"] = torch.full_like(record["delta"], number, dtype=torch.long)
        return concat_pair_records(records)

    def _recording_compute_loss(self, model, inputs, return_outputs=False):
        captured: list[torch.Tensor] = []

        def hook(module, args, kwargs, output):
            log_probs = getattr(output, "log_probs", None)
            if kwargs.get("fused_lm_head") and log_probs is not None:
                captured.append(log_probs.detach())

        unwrap = self.trainer.accelerator.unwrap_model
        modules = {id(m): m for m in (model, self.trainer.ref_model) if m is not None for m in [unwrap(m)]}
        handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules.values()]
        try:
            result = self._compute_loss(model, inputs, return_outputs)
        finally:
            for handle in handles:
                handle.remove()
        mode = "train" if self.trainer.model.training else "eval"
        self._record(mode, inputs, captured)
        return result

    def _record(self, mode, inputs, captured):
        shift_mask = inputs["completion_mask"][..., 1:]
        seq_len = shift_mask.size(1)
        if not captured:
            raise RuntimeError(
                "IPOMarginCallback found no fused LM head forward in DPOTrainer._compute_loss; this TRL version "
                "computes log-probs differently. Use trl_ipo.IPOTrainer, which records its margins itself."
            )
        logps = captured[0][:, -seq_len:].float().sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        if self.trainer.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"].float(), inputs["ref_rejected_logps"].float()
        elif len(captured) >= 2:
            ref_chosen, ref_rejected = captured[1][:, -seq_len:].float().sum(dim=1).chunk(2, dim=0)
        else:
            raise RuntimeError("IPOMarginCallback saw no reference forward in DPOTrainer._compute_loss.")
        num_chosen, num_rejected = shift_mask.sum(dim=1).chunk(2, dim=0)
        chosen_rho = reduce_logps(chosen_logps - ref_chosen, num_chosen, self.logp_reduction)
        rejected_rho = reduce_logps(rejected_logps - ref_rejected, num_rejected, self.logp_reduction)
        delta, target = ipo_regression(
            chosen_rho, rejected_rho, self.trainer.beta, None, symmetric=self.symmetric, loss_form=self.loss_form
        )
        gather = self.trainer.accelerator.gather
        delta, target = gather(delta.contiguous()).float().cpu(), gather(target.contiguous()).float().cpu()
        self.pending[mode].append({"delta": delta, "target": target, "preference": torch.ones_like(delta)})


def concat_pair_records(records: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-pair records (one dict of equal-length tensors per batch) as one tensor per key, in batch order.

    ``{}`` when there are none. Used for the pairs a stock DPOTrainer's recorder caught and, through
    ``IPOTrainer.pairs_behind_log``, for the pairs an IPOTrainer kept since its previous log.
    """
    if not records:
        return {}
    return {key: torch.cat([r[key] for r in records]) for key in records[0]}


# ------------------------------------------------------------------------------------------------------ callback
class IPOMarginCallback(TrainerCallback):
    """Per-pair margin histograms, worst-fit tables and the IPO settings on Weights & Biases.

    Args:
        trainer: the ``IPOTrainer`` or ``trl.DPOTrainer`` to watch. Add the callback after building the trainer:
            ``trainer.add_callback(IPOMarginCallback(trainer))`` (``IPOTrainer`` does this itself when
            ``report_to`` includes wandb).
        table_size: rows of the worst-fit table logged at each evaluation.
        num_bins: bins of the histograms.
        logp_reduction, loss_form, symmetric: for a stock ``DPOTrainer`` only, the IPO conventions in which Δ and
            its target are measured (an ``IPOTrainer`` uses its own ``args``). The defaults are IPOConfig's, so a
            DPO run's panels line up with an IPO run's at the same β.

    Only the main process (``state.is_world_process_zero``) writes to wandb, and only into a run that is already
    open (the one transformers' ``WandbCallback`` starts); the per-pair values it logs were gathered from all ranks.
    For a stock DPOTrainer the scalar means ``ipo/delta``, ``ipo/target``, ``ipo/residual``, ``ipo/sq_error`` are
    also added to the trainer's ``log_history`` entry (so ``trl-ipo plot`` draws them) and logged to wandb.
    """

    def __init__(
        self,
        trainer,
        table_size: int = 20,
        num_bins: int = 64,
        logp_reduction: str = "mean",
        loss_form: str = "paper",
        symmetric: bool = True,
    ):
        if trainer is None or not hasattr(trainer, "callback_handler"):
            raise TypeError("IPOMarginCallback(trainer): pass the IPOTrainer or DPOTrainer it should watch.")
        if table_size < 1 or num_bins < 1:
            raise ValueError(f"table_size and num_bins must be >= 1, got {table_size} and {num_bins}.")
        require_wandb(trainer.args)
        self.trainer = trainer
        self.table_size, self.num_bins = int(table_size), int(num_bins)
        self.recorder = None
        if not hasattr(trainer, "pairs_behind_log"):  # a stock DPOTrainer: measure the margins ourselves
            self.recorder = DPOMarginRecorder(trainer, logp_reduction, loss_form, symmetric)
        self.last_pairs: dict[str, dict[str, torch.Tensor]] = {"train": {}, "eval": {}}
        self._config_logged = False

    # ---------------------------------------------------------------------------------------------- settings
    def ipo_settings(self) -> dict:
        """What goes into the run config under ``ipo``: the settings that define Δ, its target and the loss."""
        args = self.trainer.args
        if self.recorder is None:
            settings = {name: getattr(args, name, None) for name in IPO_SETTINGS}
            settings["trainer"] = type(self.trainer).__name__
            return settings
        return {
            "trainer": type(self.trainer).__name__,
            "beta": self.trainer.beta,
            "loss_type": getattr(args, "loss_type", None),
            "loss_form": self.recorder.loss_form,
            "symmetric": self.recorder.symmetric,
            "logp_reduction": self.recorder.logp_reduction,
            "preference_column": None,
        }

    def _wandb_run(self, state):
        """The open wandb run on the main process, else None (other ranks, or no run started)."""
        if not state.is_world_process_zero:
            return None
        wandb = _optional_wandb()
        run = getattr(wandb, "run", None) if wandb is not None else None
        if run is not None and not self._config_logged:
            run.config.update({"ipo": self.ipo_settings()}, allow_val_change=True)
            self._config_logged = True
        return run

    # ----------------------------------------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, **kwargs):
        self._wandb_run(state)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        logs = logs or {}
        model = model if model is not None else self.trainer.model
        mode = "train" if model.training else "eval"
        pairs = self.recorder.take(mode) if self.recorder is not None else self.trainer.pairs_behind_log(mode)
        prefix = _metric_prefix(logs)
        if not pairs or prefix is None:
            return
        means = {}
        if self.recorder is not None:  # a stock DPOTrainer logs no ipo/* scalars: add them, averaged as TRL does
            delta, target, batch = pairs["delta"], pairs["target"], pairs["batch"]
            per_batch = [ipo_statistics(delta[batch == b], target[batch == b]) for b in batch.unique()]
            means = {f"{prefix}{k}": torch.stack([s[k] for s in per_batch]).mean().item() for k in IPO_KEYS}
            if state.log_history and state.log_history[-1].get(f"{prefix}{_MARGINS_KEY}") == logs.get(
                f"{prefix}{_MARGINS_KEY}"
            ):
                state.log_history[-1].update(means)
        if mode == "eval":  # histograms and tables: each eval row once
            pairs = _drop_padding(pairs, _eval_dataset(kwargs.get("eval_dataloader"), self.trainer))
        self.last_pairs[mode] = pairs
        delta, target = pairs["delta"].float(), pairs["target"].float()
        residual = delta - target
        run = self._wandb_run(state)
        if run is None:
            return
        import wandb

        payload = {
            **means,
            f"{prefix}ipo/delta_hist": wandb.Histogram(delta.numpy(), num_bins=self.num_bins),
            f"{prefix}ipo/residual_hist": wandb.Histogram(residual.numpy(), num_bins=self.num_bins),
        }
        run.log({**_rewrite(payload), "train/global_step": state.global_step})

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        pairs = self.last_pairs["eval"]
        prefix = _metric_prefix(metrics or {})
        run = self._wandb_run(state)
        if run is None or not pairs or prefix is None:
            return
        table = self.worst_fit_table(pairs, _eval_dataset(kwargs.get("eval_dataloader"), self.trainer))
        if table is not None:
            run.log({**_rewrite({f"{prefix}ipo/worst_fit": table}), "train/global_step": state.global_step})

    # ------------------------------------------------------------------------------------------------ table
    def worst_fit_rows(self, pairs: dict[str, torch.Tensor], dataset) -> list[list] | None:
        """Rows ``[index, prompt, chosen, rejected, delta, target, residual, q]`` of the worst-fitted eval pairs.

        Evaluation visits the eval set in order and the per-pair records are gathered rank by rank, batch by
        batch, so record i is row i of the dataset (records past ``len(dataset)`` are the padding that evens out
        the last batch across ranks). When the dataset has the preference column its q values are checked against
        the recorded ones; on any mismatch no table is built (a warning says why) rather than a mislabelled one.
        """
        try:
            n = len(dataset)
        except TypeError:
            warnings.warn(
                "IPOMarginCallback: the eval dataset has no length (iterable); no worst-fit table.", stacklevel=2
            )
            return None
        delta, target, q = pairs["delta"].float(), pairs["target"].float(), pairs["preference"].float()
        if delta.numel() < n:
            warnings.warn(
                f"IPOMarginCallback: {delta.numel()} eval pairs were recorded for an eval set of {n} rows; "
                "no worst-fit table.",
                stacklevel=2,
            )
            return None
        delta, target, q = delta[:n], target[:n], q[:n]
        column = getattr(self.trainer.args, "preference_column", None)
        if column and column in getattr(dataset, "column_names", []):
            expected = torch.tensor([float(v) for v in dataset[column]], dtype=torch.float32)
            if not torch.allclose(expected, q, atol=1e-6):
                warnings.warn(
                    "IPOMarginCallback: the recorded preferences do not follow the eval set's row order; "
                    "no worst-fit table.",
                    stacklevel=2,
                )
                return None
        tokenizer = self.trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
        rows = []
        for i in worst_fit(delta, target, self.table_size).tolist():
            prompt, chosen, rejected = pair_texts(dataset[i], tokenizer)
            d, t = delta[i].item(), target[i].item()
            rows.append([i, prompt, chosen, rejected, d, t, d - t, q[i].item()])
        return rows

    def worst_fit_table(self, pairs, dataset):
        rows = self.worst_fit_rows(pairs, dataset)
        if rows is None:
            return None
        import wandb

        columns = ["index", "prompt", "chosen", "rejected", "delta", "target", "residual", "q"]
        return wandb.Table(columns=columns, data=rows)


def _eval_dataset(dataloader, trainer):
    """The dataset the current evaluation ran on (the dataloader's), else the trainer's eval_dataset."""
    dataset = getattr(dataloader, "dataset", None)
    return dataset if dataset is not None else trainer.eval_dataset


def _drop_padding(pairs: dict[str, torch.Tensor], dataset) -> dict[str, torch.Tensor]:
    """Evaluation pairs less the ones past the dataset's length: copies that even out the last batch over ranks."""
    try:
        n = len(dataset)
    except TypeError:
        return pairs
    if next(iter(pairs.values())).numel() <= n:
        return pairs
    return {key: value[:n] for key, value in pairs.items()}


def _metric_prefix(logs: dict) -> str | None:
    """The metric-name prefix of a log entry ('' in training, 'eval_' or 'eval_<name>_' in evaluation)."""
    for key in logs:
        if key.endswith(_MARGINS_KEY):
            return key[: -len(_MARGINS_KEY)]
    return None


def _rewrite(logs: dict) -> dict:
    """Trainer log keys to wandb keys, as transformers' WandbCallback names them (``train/…``, ``eval/…``)."""
    return _compat.wandb_log_keys(logs)


def _optional_wandb():
    try:
        import wandb
    except ImportError:
        return None
    return wandb
