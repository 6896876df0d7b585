"""TR-IPO on a tiny local model: the margin against the moving reference and against the initial one, per step.

    python scripts/tr_ipo_drift.py --out docs/assets/tr-ipo

Trains ``IPOTrainer`` with ``sync_ref_model=True`` on a few hard-labelled pairs, one full batch per step, so that
the logged ``ipo/delta`` is the mean margin of the whole training set. Before every step it also computes, from a
plain forward with ``log_softmax`` (independent of the trainer), the mean per-token-mean margin Δ of the pairs
against the reference of that step and against the initial model. Between updates Δ is regressed toward the
target t/β (Azar et al. 2023 eq. 17); each update moves the reference toward the policy (Gorbatovski et al. 2024),
the margin against the new reference starts again from (1 − α) times its value, and the margin against the initial
model keeps what was gained: up to t/β per period.

Writes ``tr_ipo_drift.json`` (the settings and every number plotted) and ``tr_ipo_drift.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(_key, _value)

DEFAULTS = dict(pairs=8, beta=0.5, alpha=1.0, sync_steps=15, periods=4, learning_rate=0.01, seed=0)


def mean_margin(policy, reference, tokenizer, rows) -> float:
    """Mean over ``rows`` of Δ = ρ(chosen) − ρ(rejected), ρ the per-token mean of log π − log π_ref over the
    completion and its end-of-sequence token (``logp_reduction="mean"``)."""
    import torch

    margins = []
    for row in rows:
        rho = []
        for key in ("chosen", "rejected"):
            prompt_ids = tokenizer(row["prompt"])["input_ids"]
            ids = tokenizer(row["prompt"] + row[key] + tokenizer.eos_token)["input_ids"]
            if ids[: len(prompt_ids)] != prompt_ids:
                raise ValueError(f"the prompt {row['prompt']!r} does not tokenise as a prefix of its completion")
            ids = torch.tensor([ids])
            start = len(prompt_ids) - 1  # the logit at position i scores token i + 1
            logps = []
            for model in (policy, reference):
                with torch.no_grad():
                    logits = model(input_ids=ids).logits[0, :-1].double()
                token_logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
                logps.append(token_logps[start:])
            rho.append(((logps[0] - logps[1]).sum() / logps[0].numel()).item())
        margins.append(rho[0] - rho[1])
    return sum(margins) / len(margins)


def run(out: str | os.PathLike, model_dir: str | None = None, **settings) -> dict:
    """Train, record, write the JSON and the PNG to ``out``; return the record."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from trl_ipo import IPOConfig, IPOTrainer
    from trl_ipo.lab.tiny import build_tiny_model_folder, make_pairs

    settings = {**DEFAULTS, **settings}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        if model_dir is None:
            model_dir = str(Path(scratch) / "tiny")
            build_tiny_model_folder(model_dir, seed=settings["seed"])
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        rows = make_pairs(settings["pairs"], seed=settings["seed"] + 1)
        initial = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        steps = settings["sync_steps"] * settings["periods"]
        args = IPOConfig(
            output_dir=str(Path(scratch) / "run"),
            beta=settings["beta"],
            sync_ref_model=True,
            ref_model_mixup_alpha=settings["alpha"],
            ref_model_sync_steps=settings["sync_steps"],
            max_steps=steps,
            per_device_train_batch_size=settings["pairs"],  # one full batch: ipo/delta is the training set's mean
            learning_rate=settings["learning_rate"],
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            disable_tqdm=True,
            seed=settings["seed"],
            data_seed=settings["seed"],
        )
        record = {"vs_reference": [], "vs_initial": []}

        class Margins(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):  # the policy and reference this step sees
                trainer.model.eval()
                record["vs_reference"].append(mean_margin(trainer.model, trainer.ref_model, tokenizer, rows))
                record["vs_initial"].append(mean_margin(trainer.model, initial, tokenizer, rows))
                trainer.model.train()

            def on_train_end(self, args, state, control, **kwargs):  # after the last step
                record["final_vs_initial"] = mean_margin(trainer.model, initial, tokenizer, rows)

        torch.manual_seed(settings["seed"])
        trainer = IPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=[Margins()],
        )
        trainer.train()
    logged = [h for h in trainer.state.log_history if "ipo/delta" in h]
    result = {
        "settings": {**settings, "max_steps": steps, "logp_reduction": "mean", "symmetric": True},
        "target": logged[0]["ipo/target"],  # t/β, t = ½ for hard labels
        "steps": [int(h["step"]) for h in logged],
        "sync_after_steps": list(range(settings["sync_steps"], steps + 1, settings["sync_steps"])),
        "ipo_delta_logged": [h["ipo/delta"] for h in logged],
        "delta_vs_reference": record["vs_reference"],
        "delta_vs_initial": record["vs_initial"],
        "final_delta_vs_initial": record["final_vs_initial"],
    }
    (out / "tr_ipo_drift.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / "tr_ipo_drift.png")
    return result


def drift_at_updates(result: dict) -> list[float]:
    """Δ against the initial model right after each update's period (the policy the update copied from)."""
    after = result["delta_vs_initial"] + [result["final_delta_vs_initial"]]
    return [round(after[step], 4) for step in result["sync_after_steps"]]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, target = result["settings"], result["target"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    ax.plot(result["steps"], result["ipo_delta_logged"], color="C0", lw=1.8, label="ipo/delta: Δ against the reference")
    ax.plot(result["steps"], result["delta_vs_initial"], color="C1", lw=1.8, label="Δ against the initial model")
    for k, step in enumerate(result["sync_after_steps"]):
        ax.axvline(step + 0.5, color="0.55", ls=":", lw=1, label="reference update" if k == 0 else None)
    for k in range(1, s["periods"] + 1):
        ax.axhline(k * target, color="0.8", lw=0.8, zorder=0)
    ax.axhline(target, color="C2", ls="--", lw=1.2, label=f"target t/β = {target:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("mean margin Δ (per-token mean log-ratios)")
    ax.set_title(f"TR-IPO: β = {s['beta']:g}, α = {s['alpha']:g}, update every {s['sync_steps']} steps")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for tr_ipo_drift.json and tr_ipo_drift.png")
    parser.add_argument("--model", default=None, help="a local model folder (default: the tiny model, built)")
    parser.add_argument("--pairs", type=int, default=DEFAULTS["pairs"])
    parser.add_argument("--beta", type=float, default=DEFAULTS["beta"])
    parser.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="ref_model_mixup_alpha")
    parser.add_argument("--sync-steps", type=int, default=DEFAULTS["sync_steps"], help="ref_model_sync_steps")
    parser.add_argument("--periods", type=int, default=DEFAULTS["periods"], help="number of sync periods")
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    a = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # a tiny model runs fastest on one thread
    result = run(
        a.out,
        a.model,
        pairs=a.pairs,
        beta=a.beta,
        alpha=a.alpha,
        sync_steps=a.sync_steps,
        periods=a.periods,
        learning_rate=a.learning_rate,
        seed=a.seed,
    )
    print(f"target t/β = {result['target']:g}; Δ against the initial model at each update: {drift_at_updates(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
