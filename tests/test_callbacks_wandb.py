"""Margin dashboards: offline wandb runs read back with wandb's own reader, against the trainer's logs and by hand.

1. an offline run holds the same ipo/delta and rewards/margins per step as log_history, plus the Δ / residual
   histograms (of the per-pair values behind each log) and the worst-fit table (checked against a hand forward);
2. in a 2-rank run only rank 0 opens a wandb run, and its histograms hold both ranks' pairs;
and: the callback on a stock DPOTrainer measures the same per-pair Δ as IPOTrainer; a missing wandb is named.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cpu_args, global_rng_restored, make_pairs
from datasets import Dataset
from launch import torchrun_two_ranks
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.callbacks import WANDB_INSTALL_HINT, DPOMarginRecorder, IPOMarginCallback, require_wandb

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")  # Trainer reseeds the global generators

BETA = 0.1
STEPS = 2  # of the 2-rank worker (tests/workers/wandb_two_ranks.py), which evaluates at its last step
WORKER = Path(__file__).parent / "workers" / "wandb_two_ranks.py"


# --------------------------------------------------------------------------------------------- reading a run back
def read_offline_run(run_dir):
    """History rows and config of an offline run, decoded by wandb's own reader (`wandb leet inspect --json`)."""
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, check=True
    ).stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    config = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"].get("update", {}))
    return history, config


def rows_with(history, key):
    """{global_step: row} of the history rows that hold ``key`` (flattened: a histogram's `.values`, …)."""
    return {row["train/global_step"]: row for row in history if key in row}


def hist_counts(values, num_bins=64):
    counts, edges = np.histogram(np.asarray(values, dtype=np.float32), bins=num_bins)  # float32, as logged
    return counts.tolist(), edges


class PairSpy(TrainerCallback):
    """Keeps the per-pair records behind each log (what the margin callback turned into histograms)."""

    def __init__(self, trainer):
        self.trainer, self.pairs = trainer, {}

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        mode = "train" if model.training else "eval"
        pairs = self.trainer.pairs_behind_log(mode)
        if pairs:
            self.pairs[(mode, state.global_step)] = {k: v.clone() for k, v in pairs.items()}


def completion_logp(model, prompt_ids, completion_ids):
    """Σ log p(completion | prompt) and its token count, from a plain forward with log_softmax."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return logps[len(prompt_ids) - 1 :].sum().item(), len(completion_ids)


# ------------------------------------------------------------------------------------------- 1. offline run
@pytest.fixture(scope="module")
def offline_run(tiny_dir, tmp_path_factory):
    import wandb
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("wandb-offline")
    env = {"WANDB_DIR": str(root), "WANDB_MODE": "offline", "WANDB_PROJECT": "trl-ipo-tests"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with global_rng_restored():  # the seed below and Trainer's
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
            eval_rows = make_pairs(5, seed=7, preference=True)
            args = IPOConfig(
                **cpu_args(
                    root / "out",
                    report_to="wandb",
                    preference_column="q",
                    max_steps=2,
                    eval_strategy="steps",
                    eval_steps=2,
                    per_device_eval_batch_size=3,
                    run_name="offline",
                )
            )
            trainer = IPOTrainer(
                model,
                args=args,
                train_dataset=Dataset.from_list(make_pairs(8, preference=True)),
                eval_dataset=Dataset.from_list(eval_rows),
                processing_class=tokenizer,
            )
            margin_cb = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, IPOMarginCallback))
            margin_cb.table_size = 3  # fewer rows than the eval set: the table must pick the worst
            spy = PairSpy(trainer)
            trainer.add_callback(spy)
            trainer.train()
            run_dir = Path(wandb.run.dir).parent
    finally:
        if wandb.run is not None:
            wandb.finish()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    history, config = read_offline_run(run_dir)
    return {
        "trainer": trainer,
        "spy": spy,
        "run_dir": run_dir,
        "history": history,
        "config": config,
        "eval_rows": eval_rows,
        "tiny_dir": tiny_dir,
    }


@pytest.mark.slow
def test_offline_run_scalars_match_log_history(offline_run):
    log_history = offline_run["trainer"].state.log_history
    history = offline_run["history"]
    train = [e for e in log_history if "ipo/delta" in e]
    evals = [e for e in log_history if "eval_ipo/delta" in e]
    assert [e["step"] for e in train] == [1, 2]
    assert [e["step"] for e in evals] == [2]
    for entries, prefix, wandb_prefix in ((train, "", "train/"), (evals, "eval_", "eval/")):
        for key in ("ipo/delta", "rewards/margins", "ipo/target", "ipo/residual"):
            logged = rows_with(history, wandb_prefix + key)
            assert sorted(logged) == [e["step"] for e in entries], key
            for entry in entries:
                assert logged[entry["step"]][wandb_prefix + key] == entry[prefix + key], (key, entry["step"])
    # the IPO settings are in the run config
    assert offline_run["config"]["ipo"] == {
        "beta": BETA,
        "loss_form": "paper",
        "symmetric": True,
        "logp_reduction": "mean",
        "preference_column": "q",
        "loss_type": ["ipo"],
        "trainer": "IPOTrainer",
    }


@pytest.mark.slow
def test_offline_run_histograms_hold_the_logged_pairs(offline_run):
    history, spy, trainer = offline_run["history"], offline_run["spy"], offline_run["trainer"]
    log_history = trainer.state.log_history
    assert sorted(spy.pairs) == [("eval", 2), ("train", 1), ("train", 2)]
    for (mode, step), pairs in spy.pairs.items():
        prefix = "train/" if mode == "train" else "eval/"
        key = "ipo/delta" if mode == "train" else "eval_ipo/delta"
        entry = next(e for e in log_history if e["step"] == step and key in e)
        n_pairs = 4 if mode == "train" else 5  # one train batch per log; the whole eval set
        assert pairs["delta"].numel() == n_pairs
        # the records are the pairs behind the logged means (eval: the mean of the batch means, batches of 3 + 2)
        batches = [pairs["delta"]] if mode == "train" else [pairs["delta"][:3], pairs["delta"][3:]]
        assert np.mean([b.mean().item() for b in batches]) == pytest.approx(entry[key], rel=1e-6, abs=1e-9)
        # targets by hand: (q − ½)/β (symmetric, paper form)
        assert pairs["target"].tolist() == pytest.approx(((pairs["preference"] - 0.5) / BETA).tolist(), abs=1e-5)
        for name, values in (("delta_hist", pairs["delta"]), ("residual_hist", pairs["delta"] - pairs["target"])):
            row = rows_with(history, f"{prefix}ipo/{name}.values")[step]
            assert row[f"{prefix}ipo/{name}._type"] == "histogram"
            counts, edges = hist_counts(values.numpy())
            assert row[f"{prefix}ipo/{name}.values"] == counts
            assert sum(counts) == n_pairs
            assert row[f"{prefix}ipo/{name}.bins"] == pytest.approx(edges.tolist(), rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_offline_run_worst_fit_table(offline_run):
    history, trainer, run_dir = offline_run["history"], offline_run["trainer"], offline_run["run_dir"]
    row = rows_with(history, "eval/ipo/worst_fit.path")[2]
    assert row["eval/ipo/worst_fit._type"] == "table-file"
    table = json.loads((run_dir / "files" / row["eval/ipo/worst_fit.path"]).read_text())
    assert table["columns"] == ["index", "prompt", "chosen", "rejected", "delta", "target", "residual", "q"]
    assert len(table["data"]) == 3

    # Δ of every eval pair by hand: the final policy (evaluated at the last step) against the initial model
    policy, reference = trainer.model.eval(), trainer.ref_model.eval()  # the reference: the untrained checkpoint
    eval_rows, tokenized = offline_run["eval_rows"], trainer.eval_dataset.to_list()
    by_hand = []
    for i in range(len(eval_rows)):
        rho = {}
        for side in ("chosen", "rejected"):
            logp, n = completion_logp(policy, tokenized[i]["prompt_ids"], tokenized[i][f"{side}_ids"])
            ref_logp, _ = completion_logp(reference, tokenized[i]["prompt_ids"], tokenized[i][f"{side}_ids"])
            rho[side] = (logp - ref_logp) / n  # logp_reduction="mean"
        delta = rho["chosen"] - rho["rejected"]
        target = (eval_rows[i]["q"] - 0.5) / BETA
        by_hand.append((abs(delta - target), i, delta, target))
    worst = sorted(by_hand, key=lambda r: (-r[0], r[1]))[:3]

    for (_, i, delta, target), (index, prompt, chosen, rejected, t_delta, t_target, t_residual, q) in zip(
        worst, table["data"], strict=True
    ):
        assert index == i
        assert (prompt, chosen, rejected) == (eval_rows[i]["prompt"], eval_rows[i]["chosen"], eval_rows[i]["rejected"])
        assert q == pytest.approx(eval_rows[i]["q"], abs=1e-6)
        assert t_delta == pytest.approx(delta, abs=1e-5)
        assert t_target == pytest.approx(target, abs=1e-5)
        assert t_residual == pytest.approx(t_delta - t_target, abs=1e-9)


@pytest.mark.slow
def test_plot_draws_a_real_runs_margins(offline_run, tmp_path):
    from trl_ipo.plotting import plot_runs

    trainer = offline_run["trainer"]
    trainer.save_state()  # writes output_dir/trainer_state.json
    result = plot_runs([trainer.args.output_dir], tmp_path, labels=["ipo"], panels=["margin"])
    assert [p.name for p in result.files] == ["margin.png"]
    history = trainer.state.log_history
    for split, key in (("train", "ipo/delta"), ("eval", "eval_ipo/delta")):
        expected = ([float(e["step"]) for e in history if key in e], [e[key] for e in history if key in e])
        assert result.series[("margin.png", split, "ipo", "Δ")] == expected


# ------------------------------------------------------------------------------------------------ 2. two ranks
@pytest.mark.slow
def test_two_ranks_only_rank0_logs_and_histograms_hold_both_ranks(tiny_dir, tmp_path):
    wandb_dir = tmp_path / "wandb-root"
    wandb_dir.mkdir()
    wandb_env = {"WANDB_DIR": str(wandb_dir), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    proc = torchrun_two_ranks(WORKER, tiny_dir, tmp_path, env=wandb_env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # truly distributed: two gloo CPU ranks, each with half of the 16 rows (8 rows = 4 batches of 2), disjoint
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all("MULTI_CPU" in r["distributed_type"] for r in ranks)
    assert [r["local_batches"] for r in ranks] == [4, 4]
    assert not set(ranks[0]["local_q"]) & set(ranks[1]["local_q"])

    # one wandb run, opened by rank 0 only
    assert [r["has_wandb_run"] for r in ranks] == [True, False]
    run_dirs = sorted((wandb_dir / "wandb").glob("*run-*"))
    assert [d.name for d in run_dirs if d.is_dir()] == [Path(ranks[0]["wandb_run_dir"]).name]
    history, _ = read_offline_run(run_dirs[0])

    train_logs = [entry for entry in ranks[0]["logged"] if entry["mode"] == "train"]
    for k, logged in enumerate(train_logs):
        step = logged["step"]
        assert step == k + 1
        # the pairs behind this log: rank 0's k-th batch, then rank 1's, identified by their q
        expected_q = ranks[0]["local_q"][2 * k : 2 * k + 2] + ranks[1]["local_q"][2 * k : 2 * k + 2]
        assert logged["preference"] == pytest.approx(expected_q, abs=1e-6)
        delta = np.asarray(logged["delta"])
        residual = delta - (np.asarray(expected_q) - 0.5) / BETA
        for name, values in (("delta_hist", delta), ("residual_hist", residual)):
            row = rows_with(history, f"train/ipo/{name}.values")[step]
            counts, edges = hist_counts(values)
            assert sum(row[f"train/ipo/{name}.values"]) == 4  # 2 pairs from each rank
            assert row[f"train/ipo/{name}.values"] == counts
            assert row[f"train/ipo/{name}.bins"] == pytest.approx(edges.tolist(), rel=1e-5, abs=1e-6)
        entry = next(e for e in ranks[0]["log_history"] if e["step"] == step and "ipo/delta" in e)
        assert rows_with(history, "train/ipo/delta")[step]["train/ipo/delta"] == entry["ipo/delta"]

    # evaluation over 2 ranks: 5 rows in batches of 2 (rank 0: rows 0-1 and 4, rank 1: rows 2-3 and a padded copy);
    # the eval histogram holds the 5 rows once, and the table's rows carry their own q
    eval_rows = ranks[0]["eval_rows"]
    (eval_logged,) = [entry for entry in ranks[0]["logged"] if entry["mode"] == "eval"]
    assert len(eval_logged["preference"]) > len(eval_rows)  # the gathered records include the padding
    assert eval_logged["preference"][:5] == pytest.approx([r["q"] for r in eval_rows], abs=1e-6)
    row = rows_with(history, "eval/ipo/delta_hist.values")[STEPS]
    assert row["eval/ipo/delta_hist.values"] == hist_counts(eval_logged["delta"][:5])[0]
    table_row = rows_with(history, "eval/ipo/worst_fit.path")[STEPS]
    table = json.loads((run_dirs[0] / "files" / table_row["eval/ipo/worst_fit.path"]).read_text())
    assert sorted(r[0] for r in table["data"]) == [0, 1, 2, 3, 4]
    for index, prompt, chosen, _, delta, target, _, q in table["data"]:
        assert (prompt, chosen) == (eval_rows[index]["prompt"], eval_rows[index]["chosen"])
        assert q == pytest.approx(eval_rows[index]["q"], abs=1e-6)
        assert delta == pytest.approx(eval_logged["delta"][index], abs=1e-7)
        assert target == pytest.approx((eval_rows[index]["q"] - 0.5) / BETA, abs=1e-5)


# ---------------------------------------------------------------------------------------- stock DPOTrainer
@pytest.mark.compat
def test_callback_on_stock_dpo_trainer_measures_ipo_margins(tiny_dir, tokenizer, load_model, tmp_path):
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(1)
    ref_model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    with torch.no_grad():  # a reference different from the policy, so that Δ ≠ 0 without training
        for p in ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    eval_rows = Dataset.from_list(make_pairs(5, seed=3))
    common = cpu_args(tmp_path / "dpo", per_device_eval_batch_size=2)

    dpo = DPOTrainer(
        load_model(),
        ref_model=ref_model,
        args=DPOConfig(**common),
        train_dataset=eval_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
    )
    callback = IPOMarginCallback(dpo, loss_form="scaled", logp_reduction="sum")  # Δ = TRL's per-pair margin
    dpo.add_callback(callback)
    recorder = DPOMarginRecorder(dpo)  # IPOConfig's conventions: paper form, per-token mean
    dpo.evaluate()
    entry = dpo.state.log_history[-1]
    assert entry["eval_ipo/delta"] == pytest.approx(entry["eval_rewards/margins"], rel=1e-5, abs=1e-7)
    assert entry["eval_ipo/target"] == pytest.approx(0.5)  # scaled form: t = q − ½ = ½
    assert callback.last_pairs["eval"]["delta"].numel() == 5
    dpo_pairs = recorder.take("eval")

    ipo = IPOTrainer(
        load_model(),
        ref_model=ref_model,
        args=IPOConfig(**common),
        train_dataset=eval_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
    )
    ipo.evaluate()
    ipo_pairs = ipo.last_logged_pairs("eval")
    assert dpo_pairs["delta"].abs().max() > 1e-3
    assert dpo_pairs["delta"].tolist() == pytest.approx(ipo_pairs["delta"].tolist(), rel=1e-4, abs=1e-6)
    assert dpo_pairs["target"].tolist() == pytest.approx(ipo_pairs["target"].tolist())
    batch_means = [dpo_pairs["delta"][a:b].mean().item() for a, b in ((0, 2), (2, 4), (4, 5))]  # eval batches of 2
    assert ipo.state.log_history[-1]["eval_ipo/delta"] == pytest.approx(np.mean(batch_means), rel=1e-4)


# ----------------------------------------------------------------------------------------------- wandb missing
def test_missing_wandb_names_the_extra(monkeypatch, load_model, tokenizer, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if it were not installed
    args = IPOConfig(**cpu_args(tmp_path, report_to="wandb"))
    with pytest.raises(ImportError, match=WANDB_INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        IPOTrainer(load_model(), args=args, train_dataset=Dataset.from_list(make_pairs(4)), processing_class=tokenizer)
    assert require_wandb(IPOConfig(**cpu_args(tmp_path))) is None  # report_to="none": wandb is not needed


# ------------------------------------------------------------------------------------------------ table helpers
def test_worst_fit_order_and_pair_texts(tokenizer):
    from trl_ipo.callbacks import pair_texts, worst_fit

    delta, target = torch.tensor([0.0, 3.0, -3.0, 1.0, 3.0]), torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5])
    # |residual| = 0, 3, 3, 1, 2.5: largest first, ties by row order
    assert worst_fit(delta, target, 3).tolist() == [1, 2, 4]
    assert worst_fit(delta, target, 10).tolist() == [1, 2, 4, 3, 0]

    eos = tokenizer.eos_token
    assert pair_texts({"prompt": "a cat", "chosen": f" sat{eos}", "rejected": " ran"}, tokenizer) == (
        "a cat",
        " sat",
        " ran",
    )
    conversational = {
        "prompt": [{"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go"}],
    }
    assert pair_texts(conversational) == ("user: hi", "assistant: hello", "assistant: go")
    texts = {"prompt": "the cat", "chosen": " sat", "rejected": " ran"}
    ids = {f"{k}_ids": tokenizer(text)["input_ids"] for k, text in texts.items()}
    assert pair_texts(ids, tokenizer) == tuple(tokenizer.decode(ids[f"{k}_ids"]) for k in texts)
