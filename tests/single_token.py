"""Test helper: a language model as a K-action bandit, one fixed prompt and K responses of one word-token each.

This ties the real trainers to the exact finite-action solutions of :mod:`trl_ipo.lab.theory.finite`. For a
non-conversational dataset TRL appends the end token to every completion, so the complete response y_k is the
two tokens (w_k, EOS) and its sequence log-probability is

    log π(y_k | x) = log π(w_k | x) + log π(EOS | x, w_k).

With ``logp_reduction="sum"`` the trainer's margin Δ is the difference of these sequence log-ratios
u(y) = log π(y | x) − log π_ref(y | x), so the sampled IPO loss over the pairs is exactly the least-squares problem
of :mod:`trl_ipo.lab.theory.finite` (Azar et al. 2023 eq. 17) on the K responses. Its minimiser fixes the
differences of u, hence the policy restricted to the K responses and renormalised,

    π(y_k | x) / Σ_j π(y_j | x)  =  π*_k  ∝  π̃_ref(y_k | x) · exp(u*_k),

with π̃_ref the reference's probabilities of the K complete responses, renormalised over the K (the probability left
to other sequences only changes a constant in u, which the renormalisation removes).

The tokenizer is word-level (whitespace split) with a handful of tokens, so every response is exactly one token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["EOS", "PAD", "PROMPT", "build_word_tokenizer", "pair_rows", "response_ids", "response_distribution"]

EOS = "<|endoftext|>"
PAD = "<|pad|>"
PROMPT = "Q"


def build_word_tokenizer(words: Sequence[str]):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the special tokens, the prompt word and ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(words)
    if len(set(words)) != len(words) or PROMPT in words or any(not w.isalnum() for w in words):
        raise ValueError(f"response words must be distinct alphanumeric words other than {PROMPT!r}; got {words}")
    vocab = {token: i for i, token in enumerate([EOS, PAD, PROMPT, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=EOS))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, padding_side="left")


def pair_rows(words: Sequence[str], pairs, preference=None, repeat: int = 1) -> list[dict]:
    """Dataset rows (prompt, chosen, rejected[, q]) for action pairs (winner, loser), each pair ``repeat`` times."""
    rows = []
    for p, (w, l) in enumerate(pairs):
        row = {"prompt": PROMPT, "chosen": " " + words[w], "rejected": " " + words[l]}
        if preference is not None:
            row["q"] = float(preference[p])
        rows.append(row)
    return rows * repeat


def response_ids(tokenizer, words: Sequence[str]) -> torch.Tensor:
    """Token ids of the K complete sequences x, w_k, EOS — shape (K, 3); checks each word is one token."""
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    rows = []
    for word in words:
        ids = tokenizer(PROMPT + " " + word + EOS, add_special_tokens=False)["input_ids"]
        if len(prompt) != 1 or len(ids) != 3 or ids[:1] != prompt or ids[-1] != tokenizer.eos_token_id:
            raise ValueError(f"response {word!r} is not one token between the prompt and EOS: {ids}")
        rows.append(ids)
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def response_distribution(model, tokenizer, words: Sequence[str]) -> torch.Tensor:
    """π(y_k | x) / Σ_j π(y_j | x) over the K complete responses (w_k, EOS), in float64."""
    ids = response_ids(tokenizer, words).to(model.device)
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids).logits[:, :-1].double()
    if was_training:
        model.train()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    return torch.softmax(token_logps.sum(-1), dim=0).cpu()  # log p(w_k|x) + log p(EOS|x, w_k), renormalised
