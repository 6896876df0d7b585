"""The alignment lab: ground truth, preference labels, KL estimator; `trl-ipo demo` and `trl-ipo compare` end to end."""

import itertools
import json
import math
import random

import pytest
import torch

from trl_ipo.lab.world import language
from trl_ipo.lab.world.evaluate import exact_kl_first_tokens, kl_estimate, sample, score_completions, sequence_logps
from trl_ipo.lab.world.preferences import label_pairs, label_statistics
from trl_ipo.lab.world.reward import (
    INVALID_REWARD,
    PreferenceModel,
    best_response,
    max_reward,
    preference_probability,
    reward,
    reward_tables,
)


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and the machine's cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ language / reward
def test_reward_matches_hand_computation():
    a, b = reward_tables(0)
    got = reward("the cat likes", " the red ball and the fish .")
    phrase1 = 0.5 * (a["cat", "ball"] + b["likes", "red"])
    phrase2 = 0.5 * (a["cat", "fish"] + b["likes", None])
    assert got == pytest.approx((phrase1 + phrase2) / 2, abs=1e-12)
    assert reward("the owl takes", " the old leaf .") == pytest.approx(0.5 * (a["owl", "leaf"] + b["takes", "old"]))


@pytest.mark.parametrize(
    "response",
    [
        " the red red ball .",
        " the ball",
        "the ball .",
        " the ball and .",
        " the ball and the hat and the box .",
        " the dog .",
    ],
)
def test_ungrammatical_responses_get_the_invalid_reward(response):
    assert language.parse_response(response) is None
    assert reward("the fox sees", response) == INVALID_REWARD
    assert INVALID_REWARD < -1.0  # below every grammatical response (phrase scores are in [-1, 1])


def test_best_response_attains_the_maximum_over_enumerated_responses():
    phrases = [(adj, noun) for adj in (None, *language.ADJECTIVES) for noun in language.NOUNS]
    for prompt in ("the cat likes", "the frog hides", "the owl finds"):
        enumerated = max(
            reward(prompt, language.render_response(list(combo)))
            for k in (1, 2)
            for combo in itertools.product(phrases, repeat=k)
        )
        assert reward(prompt, best_response(prompt)) == pytest.approx(enumerated)
        assert max_reward(prompt) == pytest.approx(enumerated)


def test_prompt_split_is_disjoint_and_covers_words():
    train, held_out = language.split_prompts(seed=3, num_eval=8)
    assert len(held_out) == 8
    assert not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(language.all_prompts())
    with pytest.raises(ValueError, match="not a prompt"):
        reward("a cat likes", " the ball .")


# ------------------------------------------------------------------------------------------------ preference model
def test_preference_probability_is_bradley_terry_and_its_deterministic_limit():
    assert preference_probability(0.3, -0.2, 0.25) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert preference_probability(-0.2, 0.3, 0.25) == pytest.approx(1 / (1 + math.exp(2.0)))
    assert preference_probability(0.1, 0.1, 0.25) == 0.5
    deterministic = [preference_probability(a, b, 0.0) for a, b in ((0.3, 0.2), (0.2, 0.3), (0.2, 0.2))]
    assert deterministic == [1.0, 0.0, 0.5]
    assert preference_probability(0.3, 0.2, 1e-4) == pytest.approx(1.0)  # T → 0 approaches the deterministic v
    assert preference_probability(50.0, -50.0, 1e-3) == 1.0  # no overflow
    with pytest.raises(ValueError, match="temperature"):
        preference_probability(0.0, 0.0, -1.0)


def test_preference_model_is_a_preference_probability():
    v = PreferenceModel(temperature=0.25)
    rng = random.Random(0)
    for _ in range(50):
        x = rng.choice(language.all_prompts())
        y1, y2 = language.random_response(rng), language.random_response(rng)
        assert 0.0 <= v(x, y1, y2) <= 1.0
        assert v(x, y1, y1) == 0.5
        assert v(x, y1, y2) + v(x, y2, y1) == pytest.approx(1.0)


def test_labels_are_sampled_from_v_and_q_is_v_of_chosen_over_rejected():
    rng = random.Random(1)
    x = "the dog wants"
    y1, y2 = " the big cake .", " the hat ."
    noisy = PreferenceModel(temperature=0.5)
    v12 = noisy(x, y1, y2)
    n = 4000
    rows = label_pairs([x] * n, [y1] * n, [y2] * n, noisy, rng)
    first_wins = sum(r["chosen"] == y1 for r in rows) / n
    assert abs(first_wins - v12) < 4 * math.sqrt(v12 * (1 - v12) / n)
    for r in rows[:20]:
        assert r["q"] == pytest.approx(noisy(x, r["chosen"], r["rejected"]))
        assert r["r_chosen"] == reward(x, r["chosen"])
    # Deterministic labels: the chosen response always has the higher reward; q = 1.
    det_rows = label_pairs([x] * 10, [y1] * 10, [y2] * 10, PreferenceModel(0.0), rng)
    assert all(r["r_chosen"] > r["r_rejected"] and r["q"] == 1.0 for r in det_rows)
    assert label_statistics(det_rows)["agree"] == 1.0


# ------------------------------------------------------------------------------------------------------ evaluation
def test_oracle_gets_maximum_reward_and_beats_reference_win_rate():
    rng = random.Random(2)
    prompts = [p for p in language.all_prompts()[:8] for _ in range(6)]
    reference = [language.random_response(rng) for _ in prompts]
    v = PreferenceModel(0.0)
    oracle = score_completions(prompts, [best_response(p) for p in prompts], reference, v)
    ref_vs_itself = score_completions(prompts, reference, reference, v)
    assert oracle["reward"] == pytest.approx(sum(max_reward(p) for p in prompts) / len(prompts))
    assert ref_vs_itself["win_rate"] == 0.5
    assert oracle["win_rate"] >= ref_vs_itself["win_rate"]
    expected_wins = sum(v(p, best_response(p), y) for p, y in zip(prompts, reference, strict=True)) / len(prompts)
    assert oracle["win_rate"] == pytest.approx(expected_wins)
    assert oracle["grammatical"] == 1.0


def test_kl_estimate_mean_and_standard_error_by_hand():
    policy, ref = torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-1.5, -2.0, -2.0])
    kl, se = kl_estimate(policy, ref)
    diffs = [0.5, 0.0, -1.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert kl == pytest.approx(mean)
    assert se == pytest.approx(sd / math.sqrt(3))


def test_sequence_logps_match_unpadded_forward(tokenizer, load_model, one_thread):
    model = load_model()
    prompts = [tokenizer("the cat sat")["input_ids"], tokenizer("a big red dog ran on")["input_ids"]]
    completions = [tokenizer(" on a mat")["input_ids"] + [tokenizer.eos_token_id], tokenizer(" the log")["input_ids"]]
    batched = sequence_logps(model, prompts, completions, tokenizer.pad_token_id)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + c])).logits[0].double()
        logps = torch.log_softmax(logits, -1)
        expected = sum(logps[len(p) - 1 + j, tok].item() for j, tok in enumerate(c))
        assert batched[i].item() == pytest.approx(expected, abs=1e-4)


def test_kl_estimate_matches_exact_kl_and_is_zero_for_the_reference(tokenizer, load_model, one_thread):
    ref, policy = load_model(), load_model()
    with torch.no_grad():  # a policy that differs from the reference
        noise = torch.randn_like(policy.lm_head.weight, generator=torch.Generator().manual_seed(0))
        policy.lm_head.weight.add_(0.5 * noise)
    prompt = "the cat sat"
    exact = exact_kl_first_tokens(policy, ref, tokenizer(prompt)["input_ids"], tokenizer.eos_token_id, steps=2)
    samples = sample(policy, tokenizer, [prompt], num_samples=2000, max_new_tokens=2, batch_size=1000, seed=0)
    kl, se = kl_estimate(
        sequence_logps(policy, samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id, 1000),
        sequence_logps(ref, samples.prompt_ids, samples.completion_ids, tokenizer.pad_token_id, 1000),
    )
    assert exact > 0.05
    assert abs(kl - exact) < 4 * se
    # π_ref against (a separately loaded copy of) itself: 0.
    ref_samples = sample(ref, tokenizer, [prompt], num_samples=200, max_new_tokens=4, batch_size=200, seed=1)
    self_kl, _ = kl_estimate(
        sequence_logps(ref, ref_samples.prompt_ids, ref_samples.completion_ids, tokenizer.pad_token_id),
        sequence_logps(load_model(), ref_samples.prompt_ids, ref_samples.completion_ids, tokenizer.pad_token_id),
    )
    assert abs(self_kl) < 1e-6


# --------------------------------------------------------------------------------------------- the pipeline end to end
@pytest.mark.slow
def test_demo_quick_preset_end_to_end(tmp_path, capsys):
    import logging

    from trl_ipo.commands import demo
    from trl_ipo.lab.experiments.claims import evaluate_claims, margin_series

    threads = torch.get_num_threads()
    handler_streams = [h.stream for h in logging.getLogger("transformers").handlers if hasattr(h, "stream")]
    out = tmp_path / "demo"
    assert demo.main(["--preset", "quick", "--output_dir", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert torch.get_num_threads() == threads  # global state restored
    assert [h.stream for h in logging.getLogger("transformers").handlers if hasattr(h, "stream")] == handler_streams
    results = json.loads((out / "results.json").read_text())
    for name in (
        "report.md",
        "frontier.png",
        "kl_vs_step.png",
        "margins_vs_step.png",
        "margins_log.png",
        "kl_vs_beta.png",
        "pairs_deterministic.jsonl",
        "demo.log",
    ):
        assert (out / name).stat().st_size > 0, name
    runs = results["runs"]
    assert [(r["regime"], r["method"], r["labels"], r["beta"]) for r in runs] == [
        ("budget", "dpo", "deterministic", 0.1),
        ("budget", "ipo", "deterministic", 0.1),
        ("budget", "rlhf", "deterministic", 0.1),
        ("converged", "dpo", "deterministic", 0.1),
        ("converged", "dpo", "deterministic", 1.0),
        ("converged", "ipo", "deterministic", 0.1),
        ("converged", "ipo", "deterministic", 1.0),
        ("converged", "ipo", "noisy", 0.1),
        ("converged", "ipo_soft", "noisy", 0.1),
    ]
    config = results["config"]
    train_prompts = results["prompts"]["train"]
    report = (out / "report.md").read_text()
    # Numbers come from the runs: the table's final values are the last in-training evaluation of each run.
    for run in runs:
        steps = config[
            "rl_steps" if run["method"] == "rlhf" else "max_steps" if run["regime"] == "budget" else "converged_steps"
        ]
        assert (run["history"][0]["step"], run["history"][-1]["step"]) == (0, steps)
        assert run["final"]["kl"] == run["history"][-1]["kl"]
        assert abs(run["history"][0]["kl"]) < 1e-6  # the untrained policy is π_ref
        assert f"{run['final']['kl']:.3f}" in report
        pairs = config["pairs_per_prompt" if run["regime"] == "budget" else "converged_pairs_per_prompt"]
        assert run["pairs"] == pairs * len(train_prompts)
    # The converged regime's Δ is the mean of the logged margins over the last quarter of its steps.
    for run in (r for r in runs if r["regime"] == "converged"):
        steps, deltas = margin_series(run["log_history"], run["beta"])
        last = [d for s, d in zip(steps, deltas, strict=True) if s >= 0.75 * config["converged_steps"]]
        assert run["final"]["delta"] == pytest.approx(sum(last) / len(last))
    ipo = next(r for r in runs if r["method"] == "ipo" and r["regime"] == "converged" and r["beta"] == 1.0)
    assert [e["ipo/target"] for e in ipo["log_history"] if "ipo/target" in e][0] == pytest.approx(0.5 / ipo["beta"])
    # The claims in results.json are those computed from its own run records; each has a verdict on the terminal.
    recomputed = json.loads(json.dumps(evaluate_claims(runs, results["reference"]), default=float))
    assert json.dumps(results["claims"]) == json.dumps(recomputed)
    assert [c["id"] for c in results["claims"]] == [c["id"] for c in recomputed]
    assert len(recomputed) == 6
    assert all(c["holds"] in (True, False, None) for c in results["claims"])
    assert "## Claims" in report
    assert report.index("## Claims") < report.index("## Converged regime")
    assert "Claims" in printed
    assert all(c["statement"] in printed for c in results["claims"])
    assert results["reference"]["kl"] == 0.0
    prompts = results["prompts"]["eval"]
    assert results["oracle"]["reward"] == pytest.approx(sum(max_reward(p) for p in prompts) / len(prompts))
    pairs = [json.loads(line) for line in (out / "pairs_noisy.jsonl").read_text().splitlines()]
    assert len(pairs) == len(train_prompts)
    assert all(p["prompt"] in train_prompts for p in pairs)
    assert "best-response oracle" in printed
    assert "wall time" in printed
    # Library noise goes to the log, not to the terminal.
    for noise in ("FutureWarning", "Tokenizing", "Loading weights", "{'loss'"):
        assert noise not in printed + captured.err, noise
    assert "{'loss'" in (out / "demo.log").read_text()
    assert results["wall_time_s"] > 0
    assert results["environment"]["torch_threads"] == 1
    # Per-stage wall and CPU times, each second charged to one stage: evaluations inside the trainings included.
    timings = results["timings"]
    stages = ["sft", "pairs", "evaluation", "budget", "rlhf", "converged", "report"]
    assert list(timings) == [*stages, "total"]
    for clock in ("wall_s", "cpu_s"):
        assert all(timings[s][clock] >= 0 for s in stages)
        assert timings["total"][clock] == pytest.approx(sum(timings[s][clock] for s in stages))
    assert timings["total"]["cpu_s"] <= results["cpu_time_s"] + 1e-6
    assert timings["total"]["wall_s"] <= results["wall_time_s"] + 1e-6
    # One evaluation of π_ref, then one per point of every run's history; one training stage entry per run.
    assert timings["evaluation"]["calls"] == 1 + sum(len(run["history"]) for run in runs)
    calls = {s: sum(r["regime"] == s and r["method"] != "rlhf" for r in runs) for s in ("budget", "converged")}
    assert (
        (timings["budget"]["calls"], timings["converged"]["calls"]) == (calls["budget"], calls["converged"]) == (2, 6)
    )
    assert timings["rlhf"]["calls"] == 1
    assert timings["sft"]["calls"] == 1
    assert "## Time per stage" in report
    assert "| evaluation |" in report


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--converged_pairs_per_prompt", "60"], "converged_pairs_per_prompt=60 must be <= pairs_per_prompt=48"),
        (["--converged_betas", "0.1", "-1"], "every β must be > 0, got -1.0"),
        (["--converged_steps", "0"], "DemoConfig.converged_steps must be >= 1, got 0"),
    ],
)
def test_demo_rejects_bad_settings_in_one_line_before_running(tmp_path, capsys, argv, message):
    from trl_ipo.commands import demo

    out = tmp_path / "demo"
    assert demo.main([*argv, "--output_dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("trl-ipo demo: error: ")
    assert message in captured.err
    assert not out.exists()


def test_demo_config_takes_its_optimisation_fields_from_train_settings():
    import dataclasses

    from trl_ipo.commands.demo import DemoConfig
    from trl_ipo.lab.experiments.methods import TrainSettings

    train = {f.name: f for f in dataclasses.fields(TrainSettings)}
    shared = [f for f in dataclasses.fields(DemoConfig) if "train_setting" in f.metadata]
    assert {f.name for f in shared} == set(train) - {"max_length", "reward_learning_rate", "disable_tqdm"}
    for f in shared:  # the demo's max_steps is the budget regime's, with its own default and help text
        assert f.type == train[f.name].type
        assert f.name == "max_steps" or f.metadata["help"] == train[f.name].metadata["help"]
    assert DemoConfig.batch_size == TrainSettings.batch_size
    assert DemoConfig.max_steps == 200
    settings = DemoConfig(seed=3, learning_rate=0.01, rl_steps=7).train_settings("converged")
    assert (settings.seed, settings.learning_rate, settings.rl_steps) == (3, 0.01, 7)
    assert settings.max_steps == DemoConfig.converged_steps
    assert settings.disable_tqdm


@pytest.fixture
def pairs_file(tmp_path):
    from conftest import make_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_pairs(24, seed=4, preference=True)))
    return path


def test_compare_runs_on_local_jsonl_and_local_model(tmp_path, tiny_dir, pairs_file, capsys, one_thread):
    from trl_ipo.commands import compare

    out = tmp_path / "cmp"
    argv = [
        "--model",
        tiny_dir,
        "--dataset",
        str(pairs_file),
        "--methods",
        "dpo",
        "ipo_soft",
        "--preference_column",
        "q",
        "--max_steps",
        "2",
        "--batch_size",
        "3",
        "--learning_rate",
        "1e-3",
        "--eval_fraction",
        "0.25",
        "--kl_prompts",
        "3",
        "--kl_samples",
        "2",
        "--max_new_tokens",
        "6",
        "--output_dir",
        str(out),
        "--quiet",
        "--use_cpu",
        "--threads",
        "2",
    ]
    threads = torch.get_num_threads()
    assert compare.main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads applies to the run only
    results = json.loads((out / "results.json").read_text())
    assert (results["train_rows"], results["held_out_rows"]) == (18, 6)
    by_method = {r["method"]: r for r in results["runs"]}
    for _method, run in by_method.items():
        metrics = run["eval_metrics"]
        assert run["final"]["accuracy"] == metrics["eval_rewards/accuracies"]
        assert run["final"]["delta"] == pytest.approx(metrics["eval_rewards/margins"] / 0.1)
        assert abs(run["history"][0]["kl"]) < 1e-6
        assert run["history"][-1]["step"] == 2
    # Soft-label IPO's held-out target is the mean of (q − ½)/β over the held-out rows (two eval batches of 3).
    from datasets import load_dataset

    rows = load_dataset("json", data_files=str(pairs_file), split="train")
    held_out = rows.train_test_split(test_size=6, seed=0)["test"]
    expected = sum((q - 0.5) / 0.1 for q in held_out["q"]) / 6
    assert by_method["ipo_soft"]["final"]["target"] == pytest.approx(expected, rel=1e-5)
    assert by_method["dpo"]["final"]["target"] is None
    assert (out / "report.md").exists()
    assert "held-out accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", "Dataset file or folder not found"),
        ("wrong_columns", "missing column(s) ['chosen', 'rejected']"),
        ("empty_split", "empty"),
        ("missing_model", "model folder not found"),
        ("soft_without_column", "needs --preference_column"),
        ("bad_q", "outside [0, 1]"),
    ],
)
def test_compare_rejects_bad_input_before_training(tmp_path, tiny_dir, pairs_file, capsys, case, message):
    from trl_ipo.commands import compare

    dataset, model, extra = str(pairs_file), tiny_dir, []
    if case == "missing_file":
        dataset = str(tmp_path / "nope.jsonl")
    elif case == "wrong_columns":
        dataset = str(tmp_path / "bad.jsonl")
        (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "a", "good": "b", "bad": "c"}) + "\n")
    elif case == "empty_split":
        dataset = str(tmp_path / "two.jsonl")
        row = json.dumps({"prompt": "a", "chosen": " b", "rejected": " c"}) + "\n"
        (tmp_path / "two.jsonl").write_text(row * 2)
        extra = ["--eval_fraction", "0.2"]
    elif case == "missing_model":
        model = str(tmp_path / "no-model")
    elif case == "soft_without_column":
        extra = ["--methods", "ipo_soft"]
    elif case == "bad_q":
        dataset = str(tmp_path / "q.jsonl")
        rows = [{"prompt": "a", "chosen": " b", "rejected": " c", "q": 1.5 if i == 7 else 0.5} for i in range(10)]
        (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        extra = ["--methods", "ipo_soft", "--preference_column", "q"]
    out = tmp_path / "out"
    assert compare.main(["--model", model, "--dataset", dataset, "--output_dir", str(out), *extra]) == 2
    err = capsys.readouterr().err  # (after any progress bars of `datasets`)
    assert "Traceback" not in err
    assert err.count("error:") == 1
    assert err.splitlines()[-1].startswith("trl-ipo compare: error: ")
    assert message in err.splitlines()[-1]
    assert not out.exists()  # nothing trained, nothing written
