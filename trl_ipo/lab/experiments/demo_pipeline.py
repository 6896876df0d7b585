"""The pipeline of `trl-ipo demo`, stage by stage (see :mod:`trl_ipo.commands.demo` for what it tests).

1. π_ref: a tiny Qwen2 fine-tuned with TRL's SFTTrainer on the lab language (:mod:`trl_ipo.lab.world.language`).
2. Preference pairs y₁, y₂ ~ π_ref per training prompt, labelled under the deterministic and the noisy preference
   model (:mod:`trl_ipo.lab.world.preferences`); π_ref and the best-response oracle evaluated on held-out prompts.
3. The budget regime, 4. the converged regime (:mod:`trl_ipo.lab.experiments.demo_training`).
5. The claims (:mod:`trl_ipo.lab.experiments.claims`), the report and plots
   (:mod:`trl_ipo.lab.experiments.demo_report`), ``results.json``.

Each stage's wall and CPU time goes to ``results.json`` under ``timings``
(:class:`trl_ipo.lab.experiments.stage_times.StageTimes`): ``sft``, ``pairs`` (sampling and labelling the pairs),
``budget`` and ``converged`` (the DPO and IPO trainings), ``rlhf`` (reward model and RLOO), ``evaluation`` (every
held-out evaluation, also those inside training runs), ``report`` (the plots).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

from .demo_config import DemoConfig
from .demo_console import Console, step_bar_callback
from .stage_times import StageTimes

__all__ = ["STAGES", "environment", "run_demo"]

#: Stages announced on the terminal.
STAGES = 5


def run_demo(config: DemoConfig) -> dict:
    """Run the whole pipeline; write ``report.md``, the PNGs, ``results.json`` and ``demo.log``; return the results.

    Torch's thread count is set to ``config.threads`` for the run and given back afterwards, as are the console's
    redirections and the garbage collector's state.
    """
    import torch

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(out / "demo.log", config.progress)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        with console.capture():
            results = _run(config, out, console)
    finally:
        gc.unfreeze()
        torch.set_num_threads(threads)
        console.close()
    return results


def _run(config: DemoConfig, out: Path, console: Console) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..._compat import fused_lm_head_tile
    from ..world import language
    from ..world.evaluate import Evaluator
    from ..world.preferences import build_preference_rows, label_statistics
    from ..world.reward import PreferenceModel, best_response, max_reward
    from .claims import evaluate_claims
    from .demo_report import draw_plots, terminal_summary, write_demo_report
    from .demo_training import TimedEvaluator, train_regime

    started, cpu_started = time.time(), time.process_time()
    load_at_start = os.getloadavg()
    times = StageTimes()

    # 1. π_ref
    console.say(
        f"[1/{STAGES}] π_ref: tiny Qwen2 (hidden {config.hidden_size}, {config.num_layers} layers), "
        f"SFT for {config.sft_steps} steps on the lab language"
    )
    train_prompts, eval_prompts = language.split_prompts(config.seed, config.num_eval_prompts)
    with times.stage("sft"), console.bar(config.sft_steps, "SFT of π_ref") as bar:
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
            disable_tqdm=True,
            report_to=config.report_to,
            callbacks=[step_bar_callback(bar)],
        )
    # Every library is loaded now: the garbage collector leaves what exists from here on alone, so the full
    # collection each trainer runs when it starts and ends does not walk them again (undone at the end of the run).
    gc.collect()
    gc.freeze()

    # 2. ground truth, preference pairs from μ = π_ref, and the reference points on held-out prompts
    console.say(
        f"[2/{STAGES}] preference pairs: {config.pairs_per_prompt} per prompt × {len(train_prompts)} prompts, "
        f"y₁, y₂ ~ π_ref; held-out evaluation of π_ref and the best-response oracle ({len(eval_prompts)} prompts)"
    )
    with times.stage("pairs"):
        tokenizer = AutoTokenizer.from_pretrained(ref_dir)
        ref_model = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
        models = {
            "deterministic": PreferenceModel(0.0, config.seed),
            "noisy": PreferenceModel(config.noisy_temperature, config.seed),
        }
        rows = build_preference_rows(
            ref_model,
            tokenizer,
            train_prompts,
            config.pairs_per_prompt,
            models,
            config.max_new_tokens,
            config.seed,
            progress=config.progress,
            progress_file=console.terminal_err,
        )
        for name, regime_rows in rows.items():
            with open(out / f"pairs_{name}.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in regime_rows)
    # Rows come prompt by prompt, pairs_per_prompt each: the converged regime keeps the first pairs of every prompt.
    small = {
        name: [r for i, r in enumerate(regime_rows) if i % config.pairs_per_prompt < config.converged_pairs_per_prompt]
        for name, regime_rows in rows.items()
    }
    data = {"budget": rows, "converged": small}
    label_stats = {name: label_statistics(r) for name, r in rows.items()}
    with times.stage("evaluation"):
        evaluators = {
            name: Evaluator(
                ref_model,
                tokenizer,
                eval_prompts,
                model,
                config.eval_samples_per_prompt,
                config.max_new_tokens,
                config.seed,
            )
            for name, model in models.items()
        }
        reference = evaluators["deterministic"].evaluate(ref_model)
        oracle = evaluators["deterministic"].evaluate_texts(lambda ps: [best_response(p, config.seed) for p in ps])
        oracle_reward = sum(max_reward(p, config.seed) for p in eval_prompts) / len(eval_prompts)
    timed = {name: TimedEvaluator(e, times) for name, e in evaluators.items()}

    # 3–4. the two regimes
    runs = []
    reward_model_log: list[dict] = []
    with fused_lm_head_tile(ref_model.config.vocab_size):
        for stage, regime in ((3, "budget"), (4, "converged")):
            specs = config.run_specs(regime)
            pairs = len(data[regime]["deterministic"])
            steps = config.max_steps if regime == "budget" else config.converged_steps
            epochs = steps * config.batch_size / max(1, pairs)
            console.say(
                f"[{stage}/{STAGES}] {regime} regime: {len(specs)} runs on {pairs} pairs, {steps} steps of "
                f"{config.batch_size} pairs (≈ {epochs:.1f} epochs): " + ", ".join(s.label for s in specs)
            )
            regime_runs, log = train_regime(config, regime, specs, ref_dir, data[regime], timed, out, console, times)
            runs += regime_runs
            reward_model_log = reward_model_log or log

    # 5. claims and report
    console.say(f"[{STAGES}/{STAGES}] claims, report and plots")
    results = {
        "config": dataclasses.asdict(config),
        "command": "trl-ipo demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
        "environment": environment(config),
        "claims": evaluate_claims(runs, reference),
        "reward_model_log": reward_model_log,
        "prompts": {"train": train_prompts, "eval": eval_prompts},
        "pairs": {regime: len(regime_data["deterministic"]) for regime, regime_data in data.items()},
        "label_statistics": label_stats,
        "reference": reference,
        "oracle": {**oracle, "max_reward": oracle_reward},
        "runs": runs,
    }
    with times.stage("report"), console.bar(1, "report") as bar:
        plots = draw_plots(results, out)
        bar.update(1)
    results.update(
        wall_time_s=time.time() - started,
        cpu_time_s=time.process_time() - cpu_started,
        load_average_start=load_at_start,
        load_average=os.getloadavg(),
        timings=times.as_dict(),
    )
    written = write_demo_report(out, results, plots)
    results["files"] = {k: str(v) for k, v in written.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    console.show(terminal_summary(results, written, out))
    return results


def environment(config: DemoConfig) -> dict:
    """What a reproduction must match for the numbers to be identical (see docs/results.md)."""
    import datasets
    import tokenizers
    import torch
    import transformers
    import trl

    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": config.threads,
    }
