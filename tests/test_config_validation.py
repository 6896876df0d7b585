"""Every IPO field is checked for type and range when the config is built; the message names the field and value."""

import os
import pickle

import pytest
from conftest import cpu_args

from trl_ipo import IPOConfig
from trl_ipo.config import move_hub_token_to_env
from trl_ipo.errors import InputError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beta": float("inf")}, r"IPOConfig\.beta must be a finite number > 0 .*got inf"),
        ({"beta": float("nan")}, r"IPOConfig\.beta must be a finite number > 0 .*got nan"),
        ({"beta": "0.1"}, r"IPOConfig\.beta must be a number > 0 .*got '0\.1' \(str\)"),
        ({"beta": True}, r"IPOConfig\.beta must be a number > 0 .*got True \(bool\)"),
        ({"beta": [0.1, 0.2]}, r"IPOConfig\.beta must be a number > 0 .*got \[0\.1, 0\.2\] \(list\)"),
        ({"symmetric": 1}, r"IPOConfig\.symmetric must be true or false, got 1 \(int\)"),
        ({"symmetric": None}, r"IPOConfig\.symmetric must be true or false, got None \(NoneType\)"),
        ({"loss_form": ["paper"]}, r"IPOConfig\.loss_form must be one of \['paper', 'scaled'\], got \['paper'\]"),
        ({"logp_reduction": None}, r"IPOConfig\.logp_reduction must be one of \['mean', 'sum'\], got None"),
        ({"loss_type": ["ipo", "ipo"]}, r"IPOConfig\.loss_type=\['ipo', 'ipo'\] names \['ipo'\] more than once"),
        ({"loss_type": ["ipo", "sft", "sft"], "loss_weights": [1.0, 1.0, 1.0]}, r"names \['sft'\] more than once"),
        ({"loss_type": 5}, r"IPOConfig\.loss_type must be a list of names, got 5 \(int\)"),
        ({"loss_type": ["ipo", "sft"], "loss_weights": [1.0]}, r"IPOConfig\.loss_weights must be a list of 2"),
        (
            {"loss_type": ["ipo", "sft"], "loss_weights": [1.0, -0.5]},
            r"weight of 'sft' must be a finite number >= 0, "
            r"got -0\.5",
        ),
        ({"loss_type": ["ipo", "sft"], "loss_weights": [1.0, "x"]}, r"weight of 'sft' .* got 'x' \(str\)"),
        ({"preference_column": 3}, r"IPOConfig\.preference_column must be a column name or None, got 3 \(int\)"),
        ({"preference_column": " "}, r"IPOConfig\.preference_column must be a column name or None, got ' '"),
    ],
)
def test_ipo_fields_are_type_and_range_checked(overrides, message, tmp_path):
    with pytest.raises(InputError, match=message):
        IPOConfig(**cpu_args(tmp_path, **overrides))


def test_valid_values_pass_unchanged(tmp_path):
    args = IPOConfig(**cpu_args(tmp_path, beta=2, symmetric="no", loss_type=["ipo", "sft"], loss_weights=[1, 0.5]))
    assert (args.beta, args.symmetric, args.loss_type, args.loss_weights) == (2, False, ["ipo", "sft"], [1, 0.5])


def test_real_fields_given_as_fractions_or_numpy_scalars_are_stored_as_floats(tmp_path):
    """A Fraction passes the real-number checks but cannot divide a tensor: it would fail at the first step."""
    from fractions import Fraction

    import numpy as np
    import torch

    from trl_ipo.losses import ipo_target

    args = IPOConfig(
        **cpu_args(tmp_path, beta=Fraction(1, 10), loss_type=["ipo", "sft"], loss_weights=[Fraction(1, 2), np.int64(1)])
    )
    assert type(args.beta) is float
    assert args.beta == 0.1
    assert [type(w) for w in args.loss_weights] == [float, float]
    assert args.loss_weights == [0.5, 1.0]
    target = ipo_target(None, like=torch.zeros(2)) / args.beta  # the step-1 expression that Fraction breaks
    assert torch.equal(target, torch.full((2,), 5.0))

    from trl_ipo.online import OnlineIPOConfig

    online = OnlineIPOConfig(
        output_dir=str(tmp_path), bf16=False, beta=[Fraction(1, 10), Fraction(1, 5)], temperature=Fraction(1, 2)
    )
    assert online.beta == [0.1, 0.2]
    assert all(type(b) is float for b in online.beta)
    assert type(online.temperature) is float


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"beta": float("inf")}, r"OnlineIPOConfig\.beta must be a finite number > 0"),
        ({"beta": [0.1, float("inf")]}, r"OnlineIPOConfig\.beta must be a finite number > 0 .*got inf"),
        ({"symmetric": 0}, r"OnlineIPOConfig\.symmetric must be true or false, got 0 \(int\)"),
    ],
)
def test_online_config_shares_the_checks(overrides, message, tmp_path):
    from trl_ipo.online import OnlineIPOConfig

    with pytest.raises(InputError, match=message):
        OnlineIPOConfig(output_dir=str(tmp_path), bf16=False, **overrides)


def test_hub_token_is_kept_out_of_the_pickled_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    token = "hf_" + "x7" * 12
    args = IPOConfig(**cpu_args(tmp_path, hub_token=token))
    assert token.encode() not in pickle.dumps(args)  # what Trainer writes to training_args.bin (tests/test_secrets.py)
    assert move_hub_token_to_env(args) is True
    assert args.hub_token is None
    assert token.encode() not in pickle.dumps(args)
    assert os.environ["HF_TOKEN"] == token  # where huggingface_hub finds it for push_to_hub
    assert move_hub_token_to_env(args) is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mixture_coef": "half"}, r"OnlineIPOConfig\.mixture_coef must be a finite number, got 'half' \(str\)"),
        ({"mixture_coef": float("nan")}, r"OnlineIPOConfig\.mixture_coef must be a finite number, got nan"),
        (
            {"temperature": float("inf")},
            r"OnlineIPOConfig\.temperature must be a finite number in \(0\.0, inf\), "
            r"got inf",
        ),
        ({"temperature": 0.0}, r"OnlineIPOConfig\.temperature must be a finite number in \(0\.0, inf\), got 0\.0"),
        ({"bradley_terry_temperature": "1"}, r"OnlineIPOConfig\.bradley_terry_temperature .* got '1' \(str\)"),
    ],
)
def test_online_fields_are_type_and_range_checked(overrides, message, tmp_path):
    from trl_ipo.online import OnlineIPOConfig

    with pytest.raises(InputError, match=message):
        OnlineIPOConfig(output_dir=str(tmp_path), bf16=False, **overrides)
