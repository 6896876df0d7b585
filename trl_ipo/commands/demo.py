"""`trl-ipo demo`: RLHF vs DPO vs IPO on a synthetic task whose ground truth is known (no network, CPU, minutes).

Pipeline (each stage's numbers come from the runs; nothing is precomputed):

1. π_ref: a tiny Qwen2 + BPE tokenizer built locally, fine-tuned with TRL's SFTTrainer on the lab language
   (:mod:`trl_ipo.lab.language`).
2. Ground truth: a hidden reward r(x, y) and the preference model v(y, y′) = σ((r − r′)/T), deterministic (T → 0)
   and noisy (:mod:`trl_ipo.lab.reward`).
3. Pairs y₁, y₂ ~ μ = π_ref per training prompt, labelled by sampling v; q = v(chosen, rejected) kept
   (:mod:`trl_ipo.lab.preferences`).
4. On the same pairs and step budget: DPO (TRL DPOTrainer), IPO hard and soft (trl_ipo.IPOTrainer), RLHF (TRL
   RewardTrainer + RLOOTrainer with a KL penalty to π_ref); a β sweep for each (:mod:`trl_ipo.lab.methods`).
5. Held-out prompts, sampled responses: reward, win rate vs π_ref under v, KL(π‖π_ref), over training steps
   (:mod:`trl_ipo.lab.evaluate`).
6. ``report.md`` + PNG plots + ``results.json`` in ``--output_dir``, and a summary table on the terminal
   (:mod:`trl_ipo.lab.report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

HELP = "RLHF vs DPO vs IPO on a synthetic task with a known ground truth"


@dataclass
class DemoConfig:
    """Everything the demo does is set here; ``PRESETS`` holds the named variants."""

    output_dir: str = "outputs/demo"
    seed: int = 0
    threads: int = 1
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
    # preference data
    num_eval_prompts: int = 8
    pairs_per_prompt: int = 48
    noisy_temperature: float = 0.25
    max_new_tokens: int = 16
    # methods (same optimiser budget for all) and the β sweep
    dpo_betas: tuple[float, ...] = (0.1, 0.5)
    ipo_betas: tuple[float, ...] = (0.1, 0.5)
    rlhf_betas: tuple[float, ...] = (0.1, 0.5)
    noisy_beta: float = 0.1
    noisy_methods: tuple[str, ...] = ("dpo", "ipo", "ipo_soft")
    max_steps: int = 200
    batch_size: int = 16
    learning_rate: float = 3e-4
    logging_steps: int = 10
    logp_reduction: str = "sum"
    reward_steps: int = 60
    rl_steps: int = 200
    rl_learning_rate: float = 1e-3
    rl_num_generations: int = 4
    # evaluation
    eval_every: int = 25
    eval_samples_per_prompt: int = 16

    def __post_init__(self):
        for name in ("sft_steps", "max_steps", "rl_steps", "reward_steps", "pairs_per_prompt", "eval_every", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DemoConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        for beta in (*self.dpo_betas, *self.ipo_betas, *self.rlhf_betas, self.noisy_beta):
            if not beta > 0:
                raise ValueError(f"every β must be > 0, got {beta!r}")
        if not self.noisy_temperature > 0:
            raise ValueError(f"DemoConfig.noisy_temperature must be > 0, got {self.noisy_temperature!r}")
        if self.batch_size % self.rl_num_generations:
            raise ValueError(
                f"DemoConfig.batch_size={self.batch_size} must be a multiple of rl_num_generations={self.rl_num_generations}"
            )

    def run_specs(self):
        from ..lab.methods import RunSpec

        specs = [RunSpec("dpo", b) for b in self.dpo_betas] + [RunSpec("ipo", b) for b in self.ipo_betas]
        specs += [RunSpec("rlhf", b) for b in self.rlhf_betas]
        specs += [RunSpec(m, self.noisy_beta, "noisy") for m in self.noisy_methods]
        return specs

    def train_settings(self):
        from ..lab.methods import TrainSettings

        return TrainSettings(
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            logging_steps=self.logging_steps,
            logp_reduction=self.logp_reduction,
            seed=self.seed,
            reward_steps=self.reward_steps,
            rl_steps=self.rl_steps,
            rl_learning_rate=self.rl_learning_rate,
            rl_num_generations=self.rl_num_generations,
            max_new_tokens=self.max_new_tokens,
            disable_tqdm=not self.progress,
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
        logging_steps=2,
        reward_steps=2,
        rl_steps=2,
        eval_every=2,
        eval_samples_per_prompt=2,
        max_new_tokens=12,
        noisy_methods=("ipo_soft",),
    ),
}

SUMMARY_COLUMNS = [
    ("label", "run"),
    ("reward", "reward"),
    ("win_rate", "win rate vs π_ref"),
    ("kl", "KL(π‖π_ref)"),
    ("kl_stderr", "± s.e."),
    ("grammatical", "grammatical"),
    ("delta", "final Δ"),
    ("target", "IPO target t/β"),
    ("train_s", "train s"),
]


def run_demo(config: DemoConfig) -> dict:
    """Run the whole pipeline; write ``report.md``, the PNGs and ``results.json``; return the results."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run_demo(config)
    finally:
        torch.set_num_threads(threads)


def _run_demo(config: DemoConfig) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..lab import language
    from ..lab.evaluate import EvaluationCallback, Evaluator
    from ..lab.methods import finish_wandb, train_preference_method, train_rlhf
    from ..lab.preferences import build_preference_rows, label_statistics
    from ..lab.report import logged_target, margin_series, text_table, write_report
    from ..lab.reward import PreferenceModel, best_response, max_reward

    started = time.time()
    load_at_start = os.getloadavg()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = print if config.progress else (lambda *a, **k: None)
    specs = config.run_specs()
    stages = 5
    timings: dict[str, float] = {}
    reward_model_log: list[dict] = []

    # 1. π_ref
    say(f"[1/{stages}] π_ref: tiny Qwen2 (hidden {config.hidden_size}, {config.num_layers} layers) + SFT on the lab language")
    t0 = time.time()
    train_prompts, eval_prompts = language.split_prompts(config.seed, config.num_eval_prompts)
    ref_dir = language.train_reference(
        out / "reference",
        train_prompts,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        num_examples=config.sft_examples,
        max_steps=config.sft_steps,
        batch_size=config.sft_batch_size,
        learning_rate=config.sft_learning_rate,
        seed=config.seed,
        disable_tqdm=not config.progress,
        report_to=config.report_to,
    )
    timings["sft_s"] = time.time() - t0
    tokenizer = AutoTokenizer.from_pretrained(ref_dir)
    ref_model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()

    # 2–3. ground truth and preference pairs from μ = π_ref
    say(f"[2/{stages}] preference pairs: {config.pairs_per_prompt} per prompt × {len(train_prompts)} prompts, y₁, y₂ ~ π_ref")
    t0 = time.time()
    regimes = {"deterministic": PreferenceModel(0.0, config.seed), "noisy": PreferenceModel(config.noisy_temperature, config.seed)}
    rows = build_preference_rows(
        ref_model, tokenizer, train_prompts, config.pairs_per_prompt, regimes, config.max_new_tokens, config.seed, progress=config.progress
    )
    for name, regime_rows in rows.items():
        with open(out / f"pairs_{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in regime_rows)
    label_stats = {name: label_statistics(r) for name, r in rows.items()}
    timings["pairs_s"] = time.time() - t0

    # reference and oracle on held-out prompts
    say(f"[3/{stages}] held-out evaluation of π_ref and of the best-response oracle ({len(eval_prompts)} prompts)")
    evaluators = {
        name: Evaluator(ref_model, tokenizer, eval_prompts, model, config.eval_samples_per_prompt, config.max_new_tokens, config.seed)
        for name, model in regimes.items()
    }
    reference = evaluators["deterministic"].evaluate(ref_model)
    oracle = evaluators["deterministic"].evaluate_texts(lambda ps: [best_response(p, config.seed) for p in ps])
    oracle_reward = sum(max_reward(p, config.seed) for p in eval_prompts) / len(eval_prompts)

    # 4–5. the methods, evaluated along training
    say(f"[4/{stages}] training {len(specs)} runs: " + ", ".join(s.name for s in specs))
    settings = config.train_settings()
    runs = []
    reward_model = None
    for i, spec in enumerate(specs, 1):
        say(f"  run {i}/{len(specs)}: {spec.label}")
        callback = EvaluationCallback(evaluators[spec.labels], config.eval_every, spec.name)
        t0 = time.time()
        run_dir = out / "runs" / spec.name
        if spec.method == "rlhf":
            trainer, reward_trainer = train_rlhf(
                spec, ref_dir, rows[spec.labels], settings, run_dir, [callback], config.report_to, reward_model
            )
            if reward_trainer is not None:
                reward_model = reward_trainer.model
                reward_model_log = reward_trainer.state.log_history
        else:
            trainer = train_preference_method(spec, ref_dir, rows[spec.labels], settings, run_dir, [callback], config.report_to)
        train_s = time.time() - t0
        finish_wandb(config.report_to)
        log_history = trainer.state.log_history
        steps, deltas = margin_series(log_history, spec.beta)
        target = logged_target(log_history) if config.logp_reduction == "sum" else None
        final = {**callback.history[-1], "label": spec.label, "delta": deltas[-1] if deltas else None, "target": target, "train_s": train_s}
        runs.append(
            {
                "name": spec.name,
                "label": spec.label,
                "method": spec.method,
                "beta": spec.beta,
                "labels": spec.labels,
                "target": target,
                "history": callback.history,
                "log_history": log_history,
                "final": final,
            }
        )
        del trainer

    # 5. report
    say(f"[5/{stages}] report")
    wall_time = time.time() - started
    reference_row = {**reference, "label": "π_ref (no training)", "delta": 0.0}
    oracle_row = {**oracle, "label": "best-response oracle", "kl": None, "kl_stderr": None}
    load = os.getloadavg()
    intro = _intro(config, train_prompts, eval_prompts, label_stats, wall_time, load_at_start, load)
    sections = [
        "## Reference points (held-out prompts, deterministic v)",
        "",
        _markdown_rows([reference_row, oracle_row]),
        "",
    ]
    written = write_report(out, "trl-ipo demo: RLHF vs DPO vs IPO with a known ground truth", intro, runs, SUMMARY_COLUMNS,
                           reference, oracle_reward, sections)
    results = {
        "config": dataclasses.asdict(config),
        "wall_time_s": wall_time,
        "load_average_start": load_at_start,
        "load_average": load,
        "timings_s": timings,
        "reward_model_log": reward_model_log,
        "prompts": {"train": train_prompts, "eval": eval_prompts},
        "label_statistics": label_stats,
        "reference": reference,
        "oracle": {**oracle, "max_reward": oracle_reward},
        "runs": runs,
        "files": {k: str(v) for k, v in written.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    table = text_table([reference_row, *[r["final"] for r in runs], oracle_row], SUMMARY_COLUMNS)
    print("\n" + table + f"\n\nwall time {wall_time:.0f} s (load average {load[0]:.1f}); report: {written['report']}")
    return results


def _markdown_rows(rows):
    from ..lab.report import markdown_table

    return markdown_table(rows, SUMMARY_COLUMNS)


def _intro(config, train_prompts, eval_prompts, label_stats, wall_time, load_at_start, load) -> str:
    det, noisy = label_stats["deterministic"], label_stats["noisy"]
    return "\n".join(
        [
            f"π_ref: Qwen2 with hidden size {config.hidden_size}, {config.num_layers} layers, SFT for {config.sft_steps} steps. "
            f"Pairs: {det['pairs']} (both responses sampled from π_ref, {config.pairs_per_prompt} per training prompt, "
            f"{len(train_prompts)} training prompts); evaluation on {len(eval_prompts)} held-out prompts × "
            f"{config.eval_samples_per_prompt} samples.",
            "",
            f"Labels: deterministic v (chosen has the higher hidden reward in {det['agree']:.1%} of pairs, ties "
            f"{det['ties']:.1%}); noisy v with T = {config.noisy_temperature:g} (agreement {noisy['agree']:.1%}, "
            f"mean q {noisy['mean_q']:.3f}).",
            "",
            f"Every preference run: {config.max_steps} optimiser steps of {config.batch_size} pairs, lr {config.learning_rate:g}, "
            f"summed log-probs (logp_reduction={config.logp_reduction}). RLHF: reward model {config.reward_steps} steps, "
            f"RLOO {config.rl_steps} steps of {config.batch_size} completions ({config.rl_num_generations} per prompt).",
            "",
            "Columns: reward = mean hidden reward of sampled responses (max is the oracle's); win rate = E v(y, y′) against "
            "π_ref's samples (½ = no better than π_ref); KL = mean of log π(y|x) − log π_ref(y|x) over y ~ π (nats per "
            "response); grammatical = fraction of samples in the language; final Δ = summed log-ratio margin on the "
            "last logged training batch.",
            "",
            f"Wall time {wall_time:.0f} s with {config.threads} torch thread(s); 1-minute load average "
            f"{load_at_start[0]:.1f} at the start and {load[0]:.1f} at the end.",
        ]
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trl-ipo demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=DemoConfig.output_dir, help="where the report, plots and runs go (default %(default)s)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="'quick' runs every stage on a toy budget")
    p.add_argument("--report_to", default="none", help="'none' (default) or 'wandb' (one wandb run per training run)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1: fastest for these tiny models)")
    p.add_argument("--max_steps", type=int, default=None, help="optimiser steps of each preference run")
    p.add_argument("--rl_steps", type=int, default=None, help="RLOO steps of the RLHF run")
    p.add_argument("--learning_rate", type=float, default=None, help="learning rate of the preference runs")
    p.add_argument("--pairs_per_prompt", type=int, default=None, help="preference pairs sampled per training prompt")
    p.add_argument("--dpo_betas", type=float, nargs="+", default=None)
    p.add_argument("--ipo_betas", type=float, nargs="+", default=None)
    p.add_argument("--rlhf_betas", type=float, nargs="+", default=None, help="KL coefficients of the RLHF (RLOO) runs")
    p.add_argument("--no_noisy", action="store_true", help="skip the noisy-label runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(argv: list[str]) -> DemoConfig:
    args = _parser().parse_args(argv)
    values = dict(PRESETS[args.preset])
    for name in ("output_dir", "report_to", "seed", "threads", "max_steps", "rl_steps", "learning_rate", "pairs_per_prompt"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    for name in ("dpo_betas", "ipo_betas", "rlhf_betas"):
        if getattr(args, name) is not None:
            values[name] = tuple(getattr(args, name))
    if args.no_noisy:
        values["noisy_methods"] = ()
    if args.quiet:
        values["progress"] = False
    known = {f.name for f in dataclasses.fields(DemoConfig)}
    return DemoConfig(**{k: v for k, v in values.items() if k in known})


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        config = config_from_args(argv)
    except ValueError as err:
        print(f"trl-ipo demo: {err}")
        return 2
    if config.report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            print("trl-ipo demo: --report_to wandb needs the wandb package (pip install 'trl_ipo[wandb]').")
            return 2
    run_demo(config)
    return 0
