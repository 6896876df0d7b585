"""Training runs through the public trainer API, and the measures by which two runs are compared."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

# Logged once per run, not per step, or wall-clock figures: never compared.
NOT_COMPARED = {"train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}


def train_args(cfg, out, data, steps: int, bf16: bool, **overrides) -> dict:
    """Config kwargs shared by every run of the check (TRL's and IPOTrainer's)."""
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=data.pairs,
        max_steps=steps,
        learning_rate=cfg.learning_rate,
        beta=0.1,
        max_length=data.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cfg.device == "cpu",
        bf16=bf16,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    base.update(overrides)
    return base


def checkpointing_field(config_cls) -> str:
    """The TrainingArguments name of activation checkpointing: ``activation_checkpointing`` since transformers 5.x
    renamed it, ``gradient_checkpointing`` before (the image may hold an older 5.x)."""
    names = {f.name for f in fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


@dataclass
class Run:
    """What a training run logged per optimizer step, and (when asked) its gradients before each optimizer step."""

    history: list[dict]
    grads: list[dict] = field(default_factory=list)

    def values(self, key: str) -> list[float]:
        return [h[key] for h in self.history]


def grad_recorder():
    """A callback that keeps the gradients at ``on_pre_optimizer_step`` (after clipping, before the update)."""
    from transformers import TrainerCallback

    class GradRecorder(TrainerCallback):
        def __init__(self):
            self.grads = []

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            self.grads.append(
                {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
            )

    return GradRecorder()


def build_trainer(trainer_cls, config_cls, policy, ref, tok, rows, args: dict):
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    trainer = trainer_cls(
        model=policy,
        ref_model=ref,
        args=config_cls(**args),
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def train(trainer_cls, config_cls, policy, ref, tok, rows, args: dict, grads: bool = False) -> Run:
    """Train and return the per-step log entries (and gradients); the trainer and its models are dropped."""
    trainer = build_trainer(trainer_cls, config_cls, policy, ref, tok, rows, args)
    recorder = grad_recorder() if grads else None
    if recorder is not None:
        trainer.add_callback(recorder)
    trainer.train()
    history = [{k: v for k, v in h.items() if k not in NOT_COMPARED} for h in trainer.state.log_history if "loss" in h]
    return Run(history, recorder.grads if recorder else [])


# ------------------------------------------------------------------------------------------------- measures
def rel_diff(a: float, b: float, floor: float = 0.0) -> float:
    """|a − b| / max(|a|, floor); 0 when both are equal (including both infinite), inf when only one is NaN."""
    if a == b:
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b) / max(abs(a), floor, 1e-30)


def history_diff(a: Run, b: Run, keys=None, floor: float = 1.0) -> tuple[float, str]:
    """Largest relative difference over every step and every logged key (or ``keys``), relative to
    max(|value|, ``floor``): with floor 1, ``≤ 1e-5`` is pytest.approx(rel=1e-5, abs=1e-5), the tests' criterion."""
    if len(a.history) != len(b.history) or not a.history:
        return math.inf, f"steps logged: {len(a.history)} vs {len(b.history)}"
    worst, where = 0.0, ""
    for step, (x, y) in enumerate(zip(a.history, b.history, strict=True), start=1):
        names = keys or sorted(set(x) | set(y))
        for key in names:
            if key not in x or key not in y:
                return math.inf, f"step {step}: {key!r} logged by one run only"
            d = rel_diff(float(x[key]), float(y[key]), floor)
            if d > worst:
                worst, where = d, f"step {step} {key}: {x[key]!r} vs {y[key]!r}"
    return worst, where


def grads_diff(a: Run, b: Run) -> tuple[float, str]:
    """Largest relative L2 distance of the whole gradient, ‖g_b − g_a‖ / ‖g_a‖ over every parameter, over the steps;
    and where the largest per-tensor distance is, for the detail. The per-tensor figure is not a criterion: a
    tensor whose gradient is zero in exact arithmetic (a key-projection bias: the softmax ignores a constant added
    to every score of a query) holds rounding noise only, which differs from one kernel to the next."""
    if len(a.grads) != len(b.grads) or not a.grads:
        return math.inf, f"gradient steps: {len(a.grads)} vs {len(b.grads)}"
    worst, tensor_worst, where = 0.0, 0.0, ""
    for step, (ga, gb) in enumerate(zip(a.grads, b.grads, strict=True), start=1):
        if ga.keys() != gb.keys():
            return math.inf, f"step {step}: different parameters have gradients"
        diff_sq = total_sq = 0.0
        for name, x in ga.items():
            diff = float((gb[name] - x).norm())
            norm = float(x.norm())
            diff_sq, total_sq = diff_sq + diff**2, total_sq + norm**2
            d = diff / max(norm, 1e-30)
            if d > tensor_worst:
                tensor_worst, where = d, f"step {step} {name}: {d:.2g} of its own norm"
        worst = max(worst, math.sqrt(diff_sq) / max(math.sqrt(total_sq), 1e-30))
    return worst, where
