"""Tiny causal LMs and BPE tokenizers built locally (no hub): for tests, demos and benchmarks."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

WORDS = [
    "the",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "a",
    "mat",
    "log",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "happy",
    "sad",
    "sun",
    "moon",
    "tree",
    "bird",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

# A minimal ChatML template so conversational datasets work with the tiny tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, save_dir: str | os.PathLike | None = None):
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>", padding_side="left"
    )
    fast.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        fast.save_pretrained(save_dir)
    return fast


def build_model(
    tokenizer,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    seed: int = 0,
    save_dir: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    dtype: str = "float32",
):
    """A random-init Qwen2 causal LM sized for ``tokenizer`` (or ``vocab_size``)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=dtype,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if save_dir is not None:
        model.save_pretrained(save_dir)
        tokenizer.save_pretrained(save_dir)
    return model


def build_tiny_checkpoint(save_dir: str | os.PathLike, texts: Iterable[str], **model_kwargs) -> Path:
    """Tokenizer + model saved together in ``save_dir`` (a local "model id")."""
    save_dir = Path(save_dir)
    tokenizer = build_tokenizer(texts, save_dir=save_dir)
    build_model(tokenizer, save_dir=save_dir, **model_kwargs)
    return save_dir


def make_pairs(n: int, seed: int = 0, preference: bool = False) -> list[dict]:
    """Synthetic preference rows ``prompt``, ``chosen``, ``rejected`` (and ``q`` ∈ [0, 1]) from a 20-word vocabulary."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))
        row = {
            "prompt": prompt,
            "chosen": " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6))),
            "rejected": " " + " ".join(rng.choices(WORDS, k=rng.randint(1, 6))),
        }
        if preference:
            row["q"] = round(rng.random(), 3)
        rows.append(row)
    return rows


def build_tiny_model_folder(save_dir: str | os.PathLike, hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """The tiny checkpoint of the tests and docs: a BPE tokenizer trained on :func:`make_pairs` text, random Qwen2."""
    texts = [" ".join(r.values()) for r in make_pairs(300, seed=123)]
    return build_tiny_checkpoint(
        save_dir, texts, hidden_size=hidden_size, num_layers=num_layers, num_heads=4, seed=seed
    )
