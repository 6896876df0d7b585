"""Judges and rewards → q, and OnlineIPOConfig validation."""

import math

import pytest
import torch

from trl_ipo.online.judges import preference_from_judge, preference_from_rewards


def test_hard_labels_make_exact_ties_one_half():
    a = torch.tensor([1.0, 0.0, 2.5, -3.0])
    b = torch.tensor([0.0, 1.0, 2.5, -3.0])
    assert preference_from_rewards(a, b, "hard").tolist() == [1.0, 0.0, 0.5, 0.5]


def test_bradley_terry_link():
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    for temperature in (1.0, 0.5):
        expected = [1 / (1 + math.exp(-(x - y) / temperature)) for x, y in zip(a.tolist(), b.tolist(), strict=True)]
        got = preference_from_rewards(a, b, "bradley_terry", temperature)
        torch.testing.assert_close(got, torch.tensor(expected), atol=1e-6, rtol=0)


def test_rewards_must_be_finite():
    with pytest.raises(ValueError, match=r"pair\(s\) \[1\]"):
        preference_from_rewards(torch.tensor([0.0, float("nan")]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="reward_to_preference"):
        preference_from_rewards(torch.tensor([0.0]), torch.tensor([1.0]), "soft")


def test_judge_output_is_checked():
    prompts, a, b = ["p0", "p1"], ["x", "y"], ["z", "w"]
    assert preference_from_judge(lambda p, x, y: [0.25, 1], prompts, a, b).tolist() == [0.25, 1.0]
    with pytest.raises(ValueError, match="returned 1 preferences for 2 pairs"):
        preference_from_judge(lambda p, x, y: [0.5], prompts, a, b)
    with pytest.raises(ValueError, match=r"q=1.5 for pair 1 \(prompt 'p1'\)"):
        preference_from_judge(lambda p, x, y: [0.5, 1.5], prompts, a, b)
    with pytest.raises(ValueError, match="q=nan for pair 0"):
        preference_from_judge(lambda p, x, y: [float("nan"), 0.5], prompts, a, b)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss_type": "sigmoid"}, "trains IPO only"),
        ({"mixture_coef": 1.5}, r"mixture_coef \(λ\) must be in \[0, 1\]"),
        ({"logp_reduction": "max"}, "logp_reduction"),
        ({"loss_form": "huber"}, "loss_form"),
        ({"reward_to_preference": "soft"}, "reward_to_preference"),
        ({"bradley_terry_temperature": 0.0}, "bradley_terry_temperature"),
        ({"beta": -0.1}, "beta must be > 0"),
        ({"use_vllm": True, "mixture_coef": 0.5}, "vLLM samples from the policy only"),
        ({"eval_strategy": "steps"}, "no evaluation loop"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, message):
    from trl_ipo.online import OnlineIPOConfig

    with pytest.raises(ValueError, match=message):
        OnlineIPOConfig(output_dir=str(tmp_path), bf16=False, **overrides)


def test_config_defaults(tmp_path):
    from trl_ipo.online import OnlineIPOConfig

    args = OnlineIPOConfig(output_dir=str(tmp_path), bf16=False)
    assert (args.loss_type, args.logp_reduction, args.symmetric, args.loss_form) == ("ipo", "mean", True, "paper")
    assert (args.mixture_coef, args.temperature, args.reward_to_preference) == (0.0, 1.0, "hard")


def test_online_dpo_config_is_converted(tmp_path):
    from trl.experimental.online_dpo import OnlineDPOConfig

    from trl_ipo.online.trainer import _as_online_ipo_config

    dpo = OnlineDPOConfig(output_dir=str(tmp_path), bf16=False, loss_type="sigmoid", beta=0.3, max_new_tokens=7)
    args = _as_online_ipo_config(dpo, model=None)
    assert (args.loss_type, args.beta, args.max_new_tokens, args.temperature) == ("ipo", 0.3, 7, 1.0)
    tempered = OnlineDPOConfig(output_dir=str(tmp_path), bf16=False, temperature=0.7)
    assert _as_online_ipo_config(tempered, model=None).temperature == 0.7
