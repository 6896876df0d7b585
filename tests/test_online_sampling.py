"""The IPO-MD mixture sampler against hand computations, full forward passes, and transformers' generate."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import global_rng_restored

from trl_ipo.online.sampling import (
    completion_logps,
    completion_mask_from_eos,
    mixture_log_probs,
    position_ids_from_mask,
    sample_completions,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")


class FixedLogits(torch.nn.Module):
    """A stand-in language model whose next-token logits are the same at every position."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits, dtype=torch.float32))

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=self.logits.expand(input_ids.size(0), input_ids.size(1), -1))


POLICY_LOGITS = [2.0, 0.5, -1.0, 0.0]
REF_LOGITS = [-1.0, 1.5, 0.5, 0.0]


def hand_mixture(policy_logits, ref_logits, lam):
    """π_θ^(1−λ)·π_ref^λ / Z, from the two probability vectors, in plain floats."""

    def probs(logits):
        z = sum(math.exp(v) for v in logits)
        return [math.exp(v) / z for v in logits]

    p, r = probs(policy_logits), probs(ref_logits)
    w = [pi ** (1 - lam) * ri**lam for pi, ri in zip(p, r, strict=True)]
    return [wi / sum(w) for wi in w]


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_mixture_log_probs_is_the_normalised_geometric_mixture(lam):
    expected = torch.tensor(hand_mixture(POLICY_LOGITS, REF_LOGITS, lam))
    got = mixture_log_probs(torch.tensor(POLICY_LOGITS), torch.tensor(REF_LOGITS), lam).exp()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_sampler_draws_from_the_hand_computed_mixture():
    lam, n = 0.3, 20000
    expected = torch.tensor(hand_mixture(POLICY_LOGITS, REF_LOGITS, lam))
    sampled = sample_completions(
        FixedLogits(POLICY_LOGITS),
        torch.zeros(n, 1, dtype=torch.long),
        torch.ones(n, 1, dtype=torch.long),
        max_new_tokens=1,
        eos_token_ids=[3],
        pad_token_id=3,
        ref_model=FixedLogits(REF_LOGITS),
        mixture_coef=lam,
        generator=torch.Generator().manual_seed(0),
    )
    tokens = sampled.completion_ids[:, 0]
    freq = torch.bincount(tokens, minlength=4).float() / n
    sigma = (expected * (1 - expected) / n).sqrt()
    assert ((freq - expected).abs() < 5 * sigma).all(), (freq, expected)
    # The reported log-prob of each draw is log μ_λ(token).
    torch.testing.assert_close(sampled.logps[:, 0], expected.log()[tokens], atol=1e-6, rtol=0)
    # Far from the policy alone: the test would fail if the reference were ignored.
    policy_only = torch.tensor(hand_mixture(POLICY_LOGITS, REF_LOGITS, 0.0))
    assert ((freq - policy_only).abs() > 10 * sigma).any()


def test_completion_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 7, 2, 9, 2], [5, 5, 5, 5, 5], [2, 1, 1, 1, 1]])
    mask = completion_mask_from_eos(ids, eos_token_ids=[2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert position_ids_from_mask(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]


@pytest.fixture(scope="module")
def two_models(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ipo.lab.tiny import build_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    with global_rng_restored():  # build_model seeds torch's generator
        reference = build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=4, seed=1).eval()
    return tokenizer, policy, reference


def _prompts(tokenizer):
    texts = ["the cat sat on a mat", "big dog", "red sun and blue moon"]
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    assert (enc["attention_mask"] == 0).any()  # left padding present
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def _unpadded_logits(model, prompt_row, prompt_mask_row, completion_row, completion_mask_row):
    """Logits predicting each completion token, from one unpadded sequence (no batch, no masks)."""
    prompt = prompt_row[prompt_mask_row.bool()]
    completion = completion_row[completion_mask_row.bool()]
    sequence = torch.cat([prompt, completion]).unsqueeze(0)
    logits = model(input_ids=sequence).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(completion)], completion


@pytest.mark.parametrize("lam", [0.5])
def test_sampler_logps_equal_full_forward_mixture(two_models, lam):
    tokenizer, policy, reference = two_models
    prompt_ids, prompt_mask = _prompts(tokenizer)
    torch.manual_seed(0)
    sampled = sample_completions(
        policy,
        prompt_ids,
        prompt_mask,
        max_new_tokens=6,
        eos_token_ids=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        ref_model=reference,
        mixture_coef=lam,
    )
    assert sampled.completion_mask.sum() > 0
    for i in range(prompt_ids.size(0)):
        args = (prompt_ids[i], prompt_mask[i], sampled.completion_ids[i], sampled.completion_mask[i])
        logits_policy, completion = _unpadded_logits(policy, *args)
        logits_ref, _ = _unpadded_logits(reference, *args)
        expected = torch.log_softmax((1 - lam) * logits_policy + lam * logits_ref, dim=-1)
        expected = expected.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        got = sampled.logps[i][sampled.completion_mask[i].bool()]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_lambda_zero_reproduces_generate_and_its_scoring(two_models):
    tokenizer, policy, reference = two_models
    prompt_ids, prompt_mask = _prompts(tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(123)
    generated = policy.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=True,
        max_new_tokens=8,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=pad,
        eos_token_id=eos,
    )[:, prompt_ids.size(1) :]
    torch.manual_seed(123)
    sampled = sample_completions(
        policy,
        prompt_ids,
        prompt_mask,
        max_new_tokens=8,
        eos_token_ids=[eos],
        pad_token_id=pad,
        ref_model=reference,
        mixture_coef=0.0,
    )
    expected_mask = completion_mask_from_eos(generated, [eos])
    assert torch.equal(sampled.completion_ids, generated.masked_fill(expected_mask == 0, pad))
    # Scoring the draws with a full (padded) forward pass gives the sampler's log-probs.
    scored = completion_logps(policy, prompt_ids, prompt_mask, sampled.completion_ids, sampled.completion_mask)
    mask = sampled.completion_mask.bool()
    torch.testing.assert_close(scored[mask], sampled.logps[mask], atol=1e-5, rtol=0)
