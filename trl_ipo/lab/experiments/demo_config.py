"""What `trl-ipo demo` runs: :class:`DemoConfig` (every setting, checked on construction) and its named presets.

The optimisation settings shared with the other lab commands are declared with
:func:`trl_ipo.lab.experiments.methods.shared_setting`, so their defaults and help texts live in
:class:`~trl_ipo.lab.experiments.methods.TrainSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .methods import RunSpec, settings_from, shared_setting

__all__ = ["PRESETS", "DemoConfig"]


def _option(default, help_text: str):
    """A DemoConfig field with the help text of its command-line flag."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class DemoConfig:
    """Everything the demo does is set here; ``PRESETS`` holds the named variants."""

    output_dir: str = "outputs/demo"
    seed: int = shared_setting("seed")
    threads: int = _option(1, "torch threads (default 1: fastest for these tiny models)")
    report_to: str = "none"
    progress: bool = True
    # π_ref: model size and its SFT
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    sft_examples: int = 3200
    sft_steps: int = 200
    sft_batch_size: int = 32
    sft_learning_rate: float = 3e-3
    # preference data (sampled once; the converged regime uses the first pairs of each prompt)
    num_eval_prompts: int = 8
    pairs_per_prompt: int = _option(48, "pairs sampled per training prompt (budget)")
    noisy_temperature: float = 0.25
    max_new_tokens: int = shared_setting("max_new_tokens")
    # shared optimiser settings (TrainSettings' fields, defaults and help text)
    batch_size: int = shared_setting("batch_size")
    learning_rate: float = shared_setting("learning_rate")
    logging_steps: int = shared_setting("logging_steps")
    logp_reduction: str = shared_setting("logp_reduction")
    # budget regime: all the pairs, a few epochs; methods and β sweeps
    dpo_betas: tuple[float, ...] = _option((0.1, 0.5), "β of the budget-regime DPO runs")
    ipo_betas: tuple[float, ...] = _option((0.1, 0.5), "β of the budget-regime IPO runs")
    rlhf_betas: tuple[float, ...] = _option((0.1, 0.5), "KL coefficients of the RLHF runs")
    max_steps: int = shared_setting("max_steps", 200, "optimiser steps of each budget-regime preference run")
    reward_steps: int = shared_setting("reward_steps")
    rl_steps: int = shared_setting("rl_steps", 200)
    rl_learning_rate: float = shared_setting("rl_learning_rate")
    rl_num_generations: int = shared_setting("rl_num_generations")
    eval_every: int = 25
    # converged regime: a small set of pairs, many epochs; one β sweep shared by DPO and IPO
    converged_pairs_per_prompt: int = _option(8, "pairs per training prompt in the converged regime")
    converged_steps: int = _option(1000, "optimiser steps of each converged-regime run")
    converged_betas: tuple[float, ...] = _option(
        (0.1, 0.5, 1.0), "β sweep shared by DPO and IPO in the converged regime"
    )
    converged_eval_every: int = 250
    noisy_beta: float = 0.1
    noisy_methods: tuple[str, ...] = ("ipo", "ipo_soft")
    # evaluation
    eval_samples_per_prompt: int = 16

    def __post_init__(self):
        for name in (
            "sft_steps",
            "max_steps",
            "rl_steps",
            "reward_steps",
            "pairs_per_prompt",
            "eval_every",
            "batch_size",
            "converged_pairs_per_prompt",
            "converged_steps",
            "converged_eval_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.converged_pairs_per_prompt > self.pairs_per_prompt:
            raise ValueError(
                f"DemoConfig.converged_pairs_per_prompt={self.converged_pairs_per_prompt} must be <= "
                f"pairs_per_prompt={self.pairs_per_prompt} (the converged regime uses a subset of the pairs)"
            )
        for beta in (*self.dpo_betas, *self.ipo_betas, *self.rlhf_betas, *self.converged_betas, self.noisy_beta):
            if not beta > 0:
                raise ValueError(f"every β must be > 0, got {beta!r}")
        if not self.noisy_temperature > 0:
            raise ValueError(f"DemoConfig.noisy_temperature must be > 0, got {self.noisy_temperature!r}")
        if self.batch_size % self.rl_num_generations:
            raise ValueError(
                f"DemoConfig.batch_size={self.batch_size} must be a multiple of "
                f"rl_num_generations={self.rl_num_generations}"
            )
        if set(self.noisy_methods) - {"dpo", "ipo", "ipo_soft"}:
            raise ValueError(f"DemoConfig.noisy_methods must be among dpo, ipo, ipo_soft, got {self.noisy_methods!r}")

    def run_specs(self, regime: str) -> list[RunSpec]:
        """The runs of ``regime`` (``"budget"`` or ``"converged"``), in training and report order."""
        if regime == "budget":
            specs = [RunSpec("dpo", b) for b in self.dpo_betas] + [RunSpec("ipo", b) for b in self.ipo_betas]
            return specs + [RunSpec("rlhf", b) for b in self.rlhf_betas]
        specs = [RunSpec(m, b, "deterministic", "converged") for m in ("dpo", "ipo") for b in self.converged_betas]
        return specs + [RunSpec(m, self.noisy_beta, "noisy", "converged") for m in self.noisy_methods]

    def train_settings(self, regime: str):
        """The shared optimisation settings, with the step budget of ``regime``."""
        return settings_from(
            self,
            max_steps=self.max_steps if regime == "budget" else self.converged_steps,
            disable_tqdm=True,  # one progress bar per stage instead (see demo_console.Console)
        )


PRESETS: dict[str, dict] = {
    "default": {},
    # The whole pipeline in seconds (used by the test suite): every stage runs, on a toy budget.
    "quick": dict(
        hidden_size=32,
        sft_examples=64,
        sft_steps=4,
        sft_batch_size=16,
        pairs_per_prompt=1,
        num_eval_prompts=4,
        dpo_betas=(0.1,),
        ipo_betas=(0.1,),
        rlhf_betas=(0.1,),
        max_steps=4,
        batch_size=8,
        logging_steps=1,
        reward_steps=2,
        rl_steps=2,
        eval_every=2,
        converged_pairs_per_prompt=1,
        converged_steps=8,
        converged_betas=(0.1, 1.0),
        converged_eval_every=8,
        eval_samples_per_prompt=2,
        max_new_tokens=12,
        noisy_methods=("ipo", "ipo_soft"),
    ),
}
