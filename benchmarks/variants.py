"""The variants as runners: each builds its trainer (or the plain-PyTorch floor) in ``setup`` and runs its
optimizer steps in ``run(turn)``, calling ``turn.step_begin`` / ``turn.step_end`` around each."""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.config import SHAPE_FLAGS, TRL_HEAD_OUTPUTS, BenchConfig
from benchmarks.device import Device
from benchmarks.workloads import make_rows, make_shape_rows


def training_kwargs(cfg: BenchConfig, output_dir: Path, seq: int, n_steps: int) -> dict:
    """Settings shared by every trainer variant (and read by the floor for its optimizer)."""
    return dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.pairs,
        max_steps=n_steps,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        max_length=seq,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cfg.device == "cpu",
        bf16=cfg.dtype == "bfloat16",
        activation_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": cfg.dtype},
    )


class TrainerRunner:
    """A, A_prime, B or P: a real trainer whose ``train()`` runs in the rotation through a callback."""

    def __init__(self, name: str, cfg: BenchConfig, checkpoint: Path, workdir: Path, seq: int, n_steps: int):
        self.name, self.cfg, self.seq, self.n_steps = name, cfg, seq, n_steps
        self.checkpoint, self.output_dir = checkpoint, workdir / f"out-{name}-{seq}"
        self.trainer = None
        self.precompute_s: float | None = None

    def setup(self) -> None:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from transformers.trainer_callback import PrinterCallback
        from trl import DPOConfig, DPOTrainer

        from trl_ipo import IPOConfig, IPOTrainer

        cfg, name = self.cfg, self.name
        kwargs = training_kwargs(cfg, self.output_dir, self.seq, self.n_steps)
        rows = make_rows(cfg, self.seq, cfg.pairs * self.n_steps, preference=name == "A_prime")
        tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        if name == "B":
            trainer_cls, args = DPOTrainer, DPOConfig(loss_type=["ipo"], **kwargs)
        elif name == "A_prime":
            trainer_cls, args = IPOTrainer, IPOConfig(preference_column="q", symmetric=True, **kwargs)
        elif name == "P":
            trainer_cls, args = precompute_timed_trainer(), IPOConfig(precompute_ref_log_probs=True, **kwargs)
        else:
            trainer_cls, args = IPOTrainer, IPOConfig(**kwargs)
        self.trainer = trainer_cls(
            model=str(self.checkpoint), args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
        self.trainer.remove_callback(PrinterCallback)
        self.precompute_s = getattr(self.trainer, "precompute_seconds", None)
        lengths = {len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in self.trainer.train_dataset}
        lengths |= {len(r["prompt_ids"]) + len(r["rejected_ids"]) for r in self.trainer.train_dataset}
        if lengths != {self.seq}:
            raise RuntimeError(f"variant {name}: sequences tokenized to lengths {sorted(lengths)}, expected {self.seq}")

    def run(self, turn) -> None:
        from transformers import TrainerCallback

        class StepGate(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                turn.step_begin()

            def on_step_end(self, args, state, control, **kwargs):
                turn.step_end()

        self.trainer.add_callback(StepGate())
        self.trainer.train()

    def close(self) -> None:
        self.trainer = None


class ShapeRunner(TrainerRunner):
    """B, A, S, Pf or SP on a workload shape: varied lengths, ``shape_pairs`` pairs per step."""

    def __init__(self, name, cfg, checkpoint, workdir, shape, n_steps):
        super().__init__(name, cfg, checkpoint, workdir, cfg.shape_max, n_steps)
        self.shape, self.output_dir = shape, workdir / f"out-{name}-{shape}"

    def setup(self) -> None:
        from datasets import Dataset
        from transformers import AutoTokenizer
        from transformers.trainer_callback import PrinterCallback
        from trl import DPOConfig, DPOTrainer

        from trl_ipo import IPOConfig, IPOTrainer

        cfg, name = self.cfg, self.name
        kwargs = training_kwargs(cfg, self.output_dir, cfg.shape_max, self.n_steps)
        kwargs["per_device_train_batch_size"] = cfg.shape_pairs
        if name in ("S", "SP") and cfg.device == "cuda":  # the block mask skips what the branches hide
            kwargs["model_init_kwargs"] = {**kwargs["model_init_kwargs"], "attn_implementation": "flex_attention"}
        if name == "B":
            trainer_cls, args = DPOTrainer, DPOConfig(loss_type=["ipo"], **kwargs)
        else:
            trainer_cls, args = IPOTrainer, IPOConfig(**kwargs, **SHAPE_FLAGS.get(name, {}))
        rows = make_shape_rows(cfg, self.shape)[: cfg.shape_pairs * self.n_steps]
        self.trainer = trainer_cls(
            model=str(self.checkpoint),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=AutoTokenizer.from_pretrained(self.checkpoint),
        )
        self.trainer.remove_callback(PrinterCallback)


def precompute_timed_trainer():
    """IPOTrainer that records how long ``precompute_ref_log_probs`` took (it runs at construction)."""
    from trl_ipo import IPOTrainer

    class PrecomputeTimedIPOTrainer(IPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            try:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                self.precompute_seconds = getattr(self, "precompute_seconds", 0.0) + time.perf_counter() - start

    return PrecomputeTimedIPOTrainer


class FloorRunner:
    """F: what any IPO step must do — the model's own compute, with TRL's fused LM head (log-probs only).

    F_metrics: the same, with the head also computing the per-token outputs DPOTrainer logs.
    """

    def __init__(
        self, cfg: BenchConfig, checkpoint: Path, workdir: Path, seq: int, n_steps: int, device: Device, name: str = "F"
    ):
        self.cfg, self.checkpoint, self.seq, self.n_steps, self.device = cfg, checkpoint, seq, n_steps, device
        self.name = name
        self.head_outputs = TRL_HEAD_OUTPUTS if name == "F_metrics" else ("log_probs",)
        self.output_dir = workdir / f"out-{name}-{seq}"

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer
        from trl import DPOConfig
        from trl.trainer.dpo_trainer import DataCollatorForPreference
        from trl.trainer.utils import add_fused_lm_head

        cfg = self.cfg
        torch_device = torch.device("cuda" if self.device.cuda else "cpu")
        dtype = getattr(torch, cfg.dtype)
        self.policy = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=dtype).to(torch_device)
        self.ref = AutoModelForCausalLM.from_pretrained(self.checkpoint, dtype=dtype).to(torch_device)
        add_fused_lm_head(self.policy, outputs=self.head_outputs)
        add_fused_lm_head(self.ref)
        self.policy.train()
        self.ref.eval().requires_grad_(False)
        args = DPOConfig(**training_kwargs(cfg, self.output_dir, self.seq, self.n_steps))
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, self.policy)
        self.optimizer = optimizer_cls(self.policy.parameters(), **optimizer_kwargs)
        self.autocast = lambda: torch.autocast(torch_device.type, dtype=dtype, enabled=args.bf16)

        tokenizer = AutoTokenizer.from_pretrained(self.checkpoint)
        collate = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=self.seq)
        rows = make_rows(cfg, self.seq, cfg.pairs * self.n_steps, preference=False)
        eos = [tokenizer.eos_token_id]
        examples = [
            {
                "prompt_ids": tokenizer(r["prompt"])["input_ids"],
                "chosen_ids": tokenizer(r["chosen"])["input_ids"] + eos,
                "rejected_ids": tokenizer(r["rejected"])["input_ids"] + eos,
            }
            for r in rows
        ]
        self.batches = []
        for i in range(0, len(examples), cfg.pairs):
            batch = collate(examples[i : i + cfg.pairs])
            if tuple(batch["input_ids"].shape) != (2 * cfg.pairs, self.seq):
                raise RuntimeError(
                    f"floor batch has shape {tuple(batch['input_ids'].shape)}, expected {(2 * cfg.pairs, self.seq)}"
                )
            self.batches.append({k: v.to(torch_device) for k, v in batch.items()})

    def step(self, batch) -> None:
        import torch

        from trl_ipo.losses import ipo_loss

        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        inputs = dict(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
        with self.autocast():
            logps = self.policy(**inputs).log_probs.sum(dim=1)
            with torch.no_grad():
                ref_logps = self.ref(**inputs).log_probs.sum(dim=1)
        chosen, rejected = (logps - ref_logps).chunk(2)
        ipo_loss(chosen, rejected, self.cfg.beta).mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, turn) -> None:
        for i in range(self.n_steps):
            turn.step_begin()
            self.step(self.batches[i % len(self.batches)])
            turn.step_end()

    def close(self) -> None:
        self.policy = self.ref = self.optimizer = self.batches = None


def make_runner(name: str, cfg: BenchConfig, checkpoint: Path, workdir: Path, seq: int, n_steps: int, device: Device):
    if name in ("F", "F_metrics"):
        return FloorRunner(cfg, checkpoint, workdir, seq, n_steps, device, name)
    return TrainerRunner(name, cfg, checkpoint, workdir, seq, n_steps)
