"""What reward functions and judges return, checked before it becomes a label (OnlineIPOTrainer).

A completion that no reward function scored is an error naming the function and the completion, not a reward of 0;
``None`` is fine where another function scored the completion (TRL's multi-reward convention). A wrong count, a
string, a judge that empties its input lists: one ``InputError`` line naming the function and what it returned. A
judge that hangs: ``judge_timeout``.
"""

import threading
import time

import pytest
import torch
from test_online_trainer import (
    PROMPTS,
    FixedOnlineIPO,
    build,
    soft_length_judge,
    text_length_reward,
)

from trl_ipo.errors import InputError
from trl_ipo.online import OnlineIPOConfig
from trl_ipo.online.judges import JudgeTimeoutError, combine_rewards, preference_from_judge, reward_values

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")

N = 2 * len(PROMPTS)  # completions per step: a_0..a_3, b_0..b_3


def _train(load_model, tokenizer, tmp_path, trainer_kwargs, **overrides):
    trainer, _ = build(FixedOnlineIPO, OnlineIPOConfig, load_model, tokenizer, tmp_path, trainer_kwargs, **overrides)
    trainer.train()
    return trainer


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------------------------- None and NaN
def all_none(prompts, completions, **kwargs):
    return [None] * len(completions)


def none_for_a(prompts, completions, **kwargs):
    """None for the a-completions (the first half), −1 for the b-completions."""
    half = len(completions) // 2
    return [None] * half + [-1.0] * half


def nan_for_pair_two(prompts, completions, **kwargs):
    return [float("nan") if i in (2, 2 + len(completions) // 2) else 1.0 for i in range(len(completions))]


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (all_none, r"no reward function scored completion 0 \(pair 0, completion a\): reward function `all_none`"),
        (none_for_a, r"no reward function scored completion 0 \(pair 0, completion a\): reward function `none_for_a`"),
        (nan_for_pair_two, r"completion 2 \(pair 2, completion a\): reward function `nan_for_pair_two` returned"),
    ],
)
def test_a_completion_no_function_scored_is_an_error(load_model, tokenizer, tmp_path, reward, message):
    with pytest.raises(InputError, match=message) as err:
        _train(load_model, tokenizer, tmp_path, {"reward_funcs": reward})
    assert "None is allowed only where another reward function scores the completion" in _one_line(err)


def test_two_functions_name_both_when_neither_scored(load_model, tokenizer, tmp_path):
    with pytest.raises(InputError, match=r"reward functions `all_none`, `none_for_a` returned None/NaN"):
        _train(load_model, tokenizer, tmp_path, {"reward_funcs": [all_none, none_for_a]})


def test_none_where_another_function_scored_uses_that_function(load_model, tokenizer, tmp_path):
    """TRL's convention: a function's None skips it for that completion; the others' weighted rewards remain."""
    seen = {}

    def length_of_b(prompts, completions, **kwargs):  # scores only the b-completions
        half = len(completions) // 2
        seen["completions"] = list(completions)
        return [None] * half + [float(len(c)) for c in completions[half:]]

    def length_of_a(prompts, completions, **kwargs):  # scores only the a-completions
        half = len(completions) // 2
        return [float(len(c)) for c in completions[:half]] + [float("nan")] * half

    weights = [2.0, 3.0]
    trainer = _train(
        load_model,
        tokenizer,
        tmp_path,
        {"reward_funcs": [length_of_b, length_of_a]},
        reward_weights=weights,
        reward_to_preference="bradley_terry",
        bradley_terry_temperature=8.0,
    )
    completions = seen["completions"]
    half = len(completions) // 2
    a = torch.tensor([3.0 * len(c) for c in completions[:half]])  # weight 3 on length_of_a
    b = torch.tensor([2.0 * len(c) for c in completions[half:]])  # weight 2 on length_of_b
    expected = torch.sigmoid((a - b) / 8.0)
    log = trainer.state.log_history[0]
    assert log["online/preference_mean"] == pytest.approx(expected.mean().item(), rel=1e-6)
    assert len(set(expected.tolist())) > 1  # the pairs carry different labels


def test_combine_rewards_against_a_hand_sum():
    nan = float("nan")
    per_function = torch.tensor([[1.0, nan], [nan, 2.0], [3.0, 4.0], [nan, -1.0]])
    got = combine_rewards(per_function, ["`f`", "`g`"], torch.tensor([2.0, 0.5]))
    assert got.tolist() == [2.0, 1.0, 8.0, -0.5]
    with pytest.raises(InputError, match=r"completion 3 \(pair 1, completion b\): reward functions `f`, `g`"):
        combine_rewards(torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [nan, nan]]), ["`f`", "`g`"])


# ---------------------------------------------------------------------------------------- malformed returns
def one_short(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def strings(prompts, completions, **kwargs):
    return ["good"] * len(completions)


def a_number(prompts, completions, **kwargs):
    return 1.0


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        (one_short, rf"reward function `one_short` returned {N - 1} values for {N} completions \(\[1\.0, 1\.0"),
        (strings, r"reward function `strings` returned str 'good' for completion 0"),
        (a_number, r"reward function `a_number` returned float 1\.0; it must return a list of 8 rewards"),
    ],
)
def test_malformed_reward_output_is_one_line_naming_the_function(load_model, tokenizer, tmp_path, reward, message):
    with pytest.raises(InputError, match=message) as err:
        _train(load_model, tokenizer, tmp_path, {"reward_funcs": [text_length_reward, reward]})
    _one_line(err)


def test_reward_values_accepts_numbers_none_and_1d_tensors():
    assert reward_values("`f`", [1, None, 2.5, True], 4)[::2] == [1.0, 2.5]
    assert reward_values("`f`", torch.tensor([0.5, -1.0]), 2) == [0.5, -1.0]
    with pytest.raises(InputError, match=r"`f` returned a 2-D Tensor of shape \(2, 1\)"):
        reward_values("`f`", torch.zeros(2, 1), 2)


def emptying_judge(prompts, completions_a, completions_b):
    for items in (prompts, completions_a, completions_b):
        items.clear()
    return []


def test_a_judge_that_empties_its_lists_is_named(load_model, tokenizer, tmp_path):
    with pytest.raises(InputError, match=r"the judge `emptying_judge` returned 0 preferences for 4 pairs") as err:
        _train(load_model, tokenizer, tmp_path, {"judge": emptying_judge})
    assert "it also changed its input lists (prompts from 4 to 0 items" in _one_line(err)


def test_the_judge_gets_copies():
    prompts, a, b = ["p0", "p1"], ["x", "y"], ["z", "w"]

    def judge(p, x, y):
        q = [1.0 if len(u) >= len(v) else 0.0 for u, v in zip(x, y, strict=True)]
        p.clear()
        x.append("extra")
        return q

    assert preference_from_judge(judge, prompts, a, b).tolist() == [1.0, 1.0]
    assert (prompts, a) == (["p0", "p1"], ["x", "y"])


# --------------------------------------------------------------------------------------------- judge_timeout
def test_a_hanging_judge_stops_training_after_judge_timeout(load_model, tokenizer, tmp_path):
    release = threading.Event()

    def hanging_judge(prompts, completions_a, completions_b):
        release.wait(60)
        return [0.5] * len(prompts)

    start = time.monotonic()
    try:
        with pytest.raises(
            JudgeTimeoutError, match=r"the judge `hanging_judge` did not return within judge_timeout=0\.5 s"
        ):
            _train(load_model, tokenizer, tmp_path, {"judge": hanging_judge}, judge_timeout=0.5)
    finally:
        release.set()  # let the worker thread finish
    assert time.monotonic() - start < 30


def test_judge_timeout_passes_results_and_errors_through():
    prompts, a, b = ["p0", "p1"], ["xx", "y"], ["z", "ww"]
    assert preference_from_judge(soft_length_judge, prompts, a, b, timeout=30).tolist() == pytest.approx(
        soft_length_judge(prompts, a, b)
    )

    def failing(p, x, y):
        raise KeyError("judge API key missing")

    with pytest.raises(KeyError, match="judge API key missing"):
        preference_from_judge(failing, prompts, a, b, timeout=30)


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), "soon", True])
def test_judge_timeout_must_be_positive_seconds(tmp_path, value):
    with pytest.raises(InputError, match=r"OnlineIPOConfig\.judge_timeout must be a number of seconds > 0"):
        OnlineIPOConfig(output_dir=str(tmp_path), bf16=False, judge_timeout=value)
    assert OnlineIPOConfig(output_dir=str(tmp_path), bf16=False, judge_timeout="2.5").judge_timeout == 2.5
    assert OnlineIPOConfig(output_dir=str(tmp_path), bf16=False).judge_timeout is None


# ------------------------------------------------------------------------------------------------ reward models
def test_a_reward_model_scores_each_prompt_and_completion(load_model, tokenizer, tmp_path):
    """A sequence-classification reward model: its first logit on the unpadded text, one forward per text."""
    from transformers import Qwen2ForSequenceClassification

    policy = load_model()
    config = policy.config.__class__.from_dict({**policy.config.to_dict(), "num_labels": 1})
    torch.manual_seed(3)
    reward_model = Qwen2ForSequenceClassification(config).eval()
    seen = {}

    def record(prompts, completions, **kwargs):
        seen["texts"] = [p + c for p, c in zip(prompts, completions, strict=True)]
        return [0.0] * len(completions)

    trainer = _train(
        load_model,
        tokenizer,
        tmp_path,
        {"reward_funcs": [reward_model, record], "reward_processing_classes": [tokenizer, None]},
        reward_to_preference="bradley_terry",
    )
    with torch.no_grad():
        scores = [
            reward_model(**tokenizer(t, return_tensors="pt", add_special_tokens=False)).logits[0, 0]
            for t in seen["texts"]
        ]
    scores = torch.stack(scores)
    expected = torch.sigmoid(scores[: len(PROMPTS)] - scores[len(PROMPTS) :])
    assert trainer.state.log_history[0]["online/preference_mean"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert expected.std() > 0  # the model tells the completions apart
