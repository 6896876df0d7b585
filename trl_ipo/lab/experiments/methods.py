"""Training three alignment methods on the same preference pairs, each with stock TRL machinery.

* DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7): ``trl.DPOTrainer`` with the logistic
  (``"sigmoid"``) loss on the hard labels.
* IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17):
  :class:`trl_ipo.IPOTrainer`, hard labels (target ½ per pair), and with soft labels (``preference_column="q"``,
  target q − ½).
* RLHF (Rafailov et al. 2023, eq. 2 and 3): a Bradley–Terry reward model fitted on the same pairs by
  ``trl.RewardTrainer`` (eq. 2), then ``trl.RLOOTrainer`` maximising that reward minus β·KL(π‖π_ref) (the
  per-sequence KL penalty is subtracted from the reward, eq. 3), with π_ref both the initial policy and the KL anchor.

Every run starts from the same π_ref checkpoint, sees the pairs of its regime (RLHF: their prompts for its RL stage)
for the regime's number of optimiser steps, and reports its training log history.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path

METHODS = ("dpo", "ipo", "ipo_soft", "rlhf")
METHOD_LABELS = {"dpo": "DPO", "ipo": "IPO", "ipo_soft": "IPO (soft q)", "rlhf": "RLHF (RM + RLOO)"}


@dataclass(frozen=True)
class RunSpec:
    """One training run: method, its β (KL strength), which labels it trains on, and its regime.

    ``regime`` names the data and step budget (in `trl-ipo demo`: ``"budget"``, many pairs for a few epochs, or
    ``"converged"``, a small set of pairs for many epochs).
    """

    method: str
    beta: float
    labels: str = "deterministic"
    regime: str = "budget"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"RunSpec.method must be one of {METHODS}, got {self.method!r}")
        if not self.beta > 0:
            raise ValueError(f"RunSpec.beta must be > 0, got {self.beta!r}")

    @property
    def name(self) -> str:
        return f"{self.regime}-{self.method}-b{self.beta:g}-{self.labels}"

    @property
    def label(self) -> str:
        return f"{METHOD_LABELS[self.method]} β={self.beta:g} ({self.labels})"


def _setting(default, help_text: str | None = None) -> Field:
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainSettings:
    """Optimisation settings shared by every method (so runs compare on the same budget).

    Each field's default and help text live here; a flat config that exposes a setting (``DemoConfig`` of
    `trl-ipo demo`) declares it with :func:`shared_setting`.
    """

    max_steps: int = _setting(100, "optimiser steps of each preference run")
    batch_size: int = _setting(16, "pairs (RLHF: sampled completions) per optimiser step")
    learning_rate: float = _setting(3e-4, "learning rate of the preference runs")
    logging_steps: int = _setting(10, "optimiser steps between the trainer's log entries")
    logp_reduction: str = _setting("sum", "IPO's Δ from summed ('sum') or per-token mean ('mean') log-probs")
    max_length: int = _setting(48, "longest prompt + response in tokens")
    seed: int = _setting(0)
    # RLHF: the reward model's fit, and the RL stage
    reward_steps: int = _setting(60, "optimiser steps of the reward model's fit")
    reward_learning_rate: float = _setting(1e-3, "learning rate of the reward model's fit")
    rl_steps: int = _setting(100, "RLOO steps of the RLHF runs")
    rl_learning_rate: float = _setting(1e-3, "learning rate of the RLOO stage")
    rl_num_generations: int = _setting(4, "completions sampled per prompt in the RLOO stage")
    max_new_tokens: int = _setting(16, "longest sampled completion in tokens")
    disable_tqdm: bool = _setting(False, "no progress bars from the trainers")


def shared_setting(name: str, default=MISSING, help_text: str | None = None) -> Field:
    """A dataclass field standing for :class:`TrainSettings`' field ``name`` in another config.

    It takes that field's default and help text (``metadata["help"]``), unless ``default`` or ``help_text`` is given;
    :func:`settings_from` copies it back into a :class:`TrainSettings`.
    """
    source = {f.name: f for f in fields(TrainSettings)}[name]
    return field(
        default=source.default if default is MISSING else default,
        metadata={"help": help_text or source.metadata["help"], "train_setting": name},
    )


def settings_from(config, **overrides) -> TrainSettings:
    """The :class:`TrainSettings` whose fields ``config`` declares with :func:`shared_setting`, plus ``overrides``."""
    shared = {
        f.metadata["train_setting"]: getattr(config, f.name) for f in fields(config) if "train_setting" in f.metadata
    }
    return TrainSettings(**{**shared, **overrides})


def trainer_args(
    output_dir,
    run_name: str,
    *,
    batch_size: int,
    learning_rate: float,
    logging_steps: int,
    seed: int,
    report_to,
    use_cpu: bool,
    disable_tqdm: bool,
    **extra,
) -> dict:
    """``TrainingArguments`` fields of every lab run: no checkpoints, fp32 without gradient checkpointing, and one
    seed for the model and the data order; ``extra`` adds fields."""
    return dict(
        output_dir=str(output_dir),
        run_name=run_name,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to=report_to,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=use_cpu,
        seed=seed,
        data_seed=seed,
        disable_tqdm=disable_tqdm,
        **extra,
    )


def _common_args(settings: TrainSettings, output_dir: Path, run_name: str, report_to) -> dict:
    return trainer_args(
        output_dir,
        run_name,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        report_to=report_to,
        use_cpu=True,
        disable_tqdm=settings.disable_tqdm,
        lr_scheduler_type="constant",
        dataloader_num_workers=0,
    )


def _pairs_dataset(rows, with_q: bool):
    from datasets import Dataset

    columns = ["prompt", "chosen", "rejected"] + (["q"] if with_q else [])
    return Dataset.from_dict({c: [r[c] for r in rows] for c in columns})


def train_on_pairs(
    method: str,
    model_dir,
    train_dataset,
    trainer_args: dict,
    *,
    beta: float,
    logp_reduction: str,
    seed: int,
    preference_column: str | None = None,
    eval_dataset=None,
    callbacks=(),
):
    """DPO, IPO or IPO-soft from the model in ``model_dir`` on a preference dataset; returns the trained trainer.

    The one place a pairwise method is built and trained (`trl-ipo demo` and `trl-ipo compare` both come here).
    ``trainer_args`` are the ``TrainingArguments`` fields shared by the methods (output_dir, batch size, learning
    rate, ...); ``beta`` is the KL strength, ``logp_reduction`` IPO's Δ reduction, and ``preference_column`` the
    column holding q, used by ``"ipo_soft"`` only. Its model is the trained policy.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args, trainer_cls = DPOConfig(loss_type=["sigmoid"], beta=beta, **trainer_args), DPOTrainer
    elif method in ("ipo", "ipo_soft"):
        from ...config import IPOConfig
        from ...trainer import IPOTrainer

        column = preference_column if method == "ipo_soft" else None
        args = IPOConfig(logp_reduction=logp_reduction, preference_column=column, beta=beta, **trainer_args)
        trainer_cls = IPOTrainer
    else:
        raise ValueError(f"train_on_pairs does not train {method!r}; use train_rlhf")
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer


def train_preference_method(
    spec: RunSpec, ref_dir, rows, settings: TrainSettings, output_dir, callbacks=(), report_to="none"
):
    """DPO, IPO or IPO-soft from π_ref on ``rows``; returns the trainer (its model is the trained policy).

    π_ref is fixed, so its log-probs of every pair are computed once before training (``precompute_ref_log_probs``)
    instead of by a reference forward at every step: the same values up to float rounding (the pairs are batched
    in dataset order for that pass), for about a fifth less CPU time per step.
    """
    if spec.method not in ("dpo", "ipo", "ipo_soft"):
        raise ValueError(f"train_preference_method does not train {spec.method!r}; use train_rlhf")
    common = _common_args(settings, Path(output_dir), spec.name, report_to)
    common.update(max_steps=settings.max_steps, max_length=settings.max_length, precompute_ref_log_probs=True)
    return train_on_pairs(
        spec.method,
        ref_dir,
        _pairs_dataset(rows, with_q=spec.method == "ipo_soft"),
        common,
        beta=spec.beta,
        logp_reduction=settings.logp_reduction,
        seed=settings.seed,
        preference_column="q",
        callbacks=callbacks,
    )


class RewardModelScorer:
    """Reward function for TRL's online trainers: the fitted reward model's score of prompt + completion + EOS.

    ``RewardTrainer`` fits the model on texts ending in EOS; the online trainer decodes completions without special
    tokens, so the EOS is appended here to score completions the way the reward model was trained.
    """

    __name__ = "reward_model"

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer

    def __call__(self, prompts, completions, **kwargs):
        import torch

        texts = [p + c + self.tokenizer.eos_token for p, c in zip(prompts, completions, strict=True)]
        inputs = self.tokenizer(
            text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
        )
        with torch.no_grad():
            return self.model(**inputs.to(self.model.device)).logits[:, 0].float().tolist()


def train_reward_model(ref_dir, rows, settings: TrainSettings, output_dir, report_to="none", callbacks=()):
    """Bradley–Terry reward model (Rafailov et al. 2023, eq. 2) from π_ref, fitted on the pairs by RewardTrainer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(ref_dir)
    model = AutoModelForSequenceClassification.from_pretrained(ref_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    common = _common_args(settings, Path(output_dir), "reward-model", report_to)
    common.update(
        max_steps=settings.reward_steps, learning_rate=settings.reward_learning_rate, max_length=settings.max_length
    )
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**common),
        train_dataset=_pairs_dataset(rows, with_q=False),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer


def train_rlhf(
    spec: RunSpec,
    ref_dir,
    rows,
    settings: TrainSettings,
    output_dir,
    callbacks=(),
    report_to="none",
    reward_model=None,
    reward_callbacks=(),
):
    """RLHF: reward model on the pairs (unless given), then RLOO against it with KL penalty β to π_ref.

    Returns ``(rl_trainer, reward_trainer_or_None)``. The RL stage takes ``settings.rl_steps`` optimiser steps, each
    on ``batch_size`` sampled completions (``rl_num_generations`` per prompt) of the training prompts.
    ``callbacks`` go to the RL stage, ``reward_callbacks`` to the reward model's fit.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    reward_trainer = None
    if reward_model is None:
        reward_trainer = train_reward_model(
            ref_dir, rows, settings, Path(output_dir) / "reward-model", report_to, reward_callbacks
        )
        reward_model = reward_trainer.model
        finish_wandb(report_to)
    tokenizer = AutoTokenizer.from_pretrained(ref_dir)
    torch.manual_seed(settings.seed)
    policy = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    prompts = sorted({r["prompt"] for r in rows})
    repeats = settings.rl_steps * settings.batch_size // (len(prompts) * settings.rl_num_generations) + 1
    dataset = Dataset.from_dict({"prompt": prompts * repeats})
    common = _common_args(settings, Path(output_dir), spec.name, report_to)
    common.update(
        beta=spec.beta,
        max_steps=settings.rl_steps,
        learning_rate=settings.rl_learning_rate,
        num_generations=settings.rl_num_generations,
        max_completion_length=settings.max_new_tokens,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        log_completions=False,
    )
    trainer = RLOOTrainer(
        model=policy,
        reward_funcs=RewardModelScorer(reward_model, tokenizer),
        args=RLOOConfig(**common),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer, reward_trainer


def finish_wandb(report_to) -> None:
    """End the active wandb run (each training stage logs to its own run) when reporting to wandb."""
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if "wandb" in targets:
        import wandb

        if wandb.run is not None:
            wandb.finish()
