"""The synthetic language of the alignment lab, and the reference policy π_ref trained on it.

A prompt names an animal and what it does; a response lists one or two things, each with an optional quality::

    prompt:    "the owl finds"
    response:  " the red box and the small leaf ."

The grammar (``response := NP ["and" NP] "."``, ``NP := "the" [ADJ] NOUN``) is small enough for a tiny causal LM
to learn in a minute, and its responses are many (8 nouns × 7 adjective choices per phrase, one or two phrases:
56 + 56² = 3192 per prompt), so a policy trained on uniformly random grammatical responses samples diverse,
meaningful text. Whether a sampled response is grammatical is decidable (:func:`parse_response`), so drift away
from the language is measurable.

π_ref is a random-init Qwen2 (:mod:`trl_ipo.lab.tiny`) fine-tuned on such responses with TRL's ``SFTTrainer``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

SUBJECTS = ("cat", "dog", "bird", "fox", "owl", "frog")
VERBS = ("likes", "sees", "wants", "finds", "hides", "takes")
NOUNS = ("ball", "tree", "fish", "box", "hat", "cake", "rock", "leaf")
ADJECTIVES = ("red", "blue", "green", "big", "small", "old")
MAX_PHRASES = 2

_PHRASE = r"the(?: (?P<adj{i}>{adjs}))? (?P<noun{i}>{nouns})"
_RESPONSE_RE = re.compile(
    r"^ "
    + _PHRASE.format(i=0, adjs="|".join(ADJECTIVES), nouns="|".join(NOUNS))
    + "".join(
        r"(?: and " + _PHRASE.format(i=i, adjs="|".join(ADJECTIVES), nouns="|".join(NOUNS)) + ")?"
        for i in range(1, MAX_PHRASES)
    )
    + r" \.$"
)
_PROMPT_RE = re.compile(r"^the (?P<subject>\w+) (?P<verb>\w+)$")


def all_prompts() -> list[str]:
    """Every prompt of the language: ``"the <subject> <verb>"`` (36 of them)."""
    return [f"the {s} {v}" for s in SUBJECTS for v in VERBS]


def split_prompts(seed: int = 0, num_eval: int = 8) -> tuple[list[str], list[str]]:
    """Disjoint (train, held-out) prompt lists; each held-out prompt's subject and verb both occur in training."""
    prompts = all_prompts()
    rng = random.Random(seed)
    while True:
        held_out = sorted(rng.sample(prompts, num_eval))
        train = [p for p in prompts if p not in held_out]
        words = {w for p in train for w in p.split()[1:]}
        if all(set(p.split()[1:]) <= words for p in held_out):
            return train, held_out


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(subject, verb) of a prompt; ValueError if ``prompt`` is not a prompt of the language."""
    match = _PROMPT_RE.match(prompt.strip())
    if not match or match["subject"] not in SUBJECTS or match["verb"] not in VERBS:
        raise ValueError(f"{prompt!r} is not a prompt of the lab language ('the <subject> <verb>').")
    return match["subject"], match["verb"]


def parse_response(response: str) -> list[tuple[str | None, str]] | None:
    """The (adjective or None, noun) phrases of a grammatical response, or None if it is not grammatical."""
    match = _RESPONSE_RE.match(response)
    if not match:
        return None
    return [(match[f"adj{i}"], match[f"noun{i}"]) for i in range(MAX_PHRASES) if match[f"noun{i}"]]


def render_response(phrases: list[tuple[str | None, str]]) -> str:
    """Inverse of :func:`parse_response`."""
    parts = [f"the {adj} {noun}" if adj else f"the {noun}" for adj, noun in phrases]
    return " " + " and ".join(parts) + " ."


def random_response(rng: random.Random) -> str:
    """A uniformly random grammatical response (1 or 2 phrases, adjective present with probability 6/7)."""
    n = rng.randint(1, MAX_PHRASES)
    return render_response([(rng.choice((None, *ADJECTIVES)), rng.choice(NOUNS)) for _ in range(n)])


def sft_examples(prompts: list[str], num_examples: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompt–completion rows for SFT of π_ref: random training prompts with uniformly random responses."""
    rng = random.Random(seed)
    return [{"prompt": rng.choice(prompts), "completion": random_response(rng)} for _ in range(num_examples)]


def corpus(num_texts: int = 2000, seed: int = 0) -> list[str]:
    """Texts to train the BPE tokenizer on (every word of the language occurs)."""
    rng = random.Random(seed)
    prompts = all_prompts()
    return [rng.choice(prompts) + random_response(rng) for _ in range(num_texts)]


def train_reference(
    output_dir: str | Path,
    train_prompts: list[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_examples: int = 4000,
    max_steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    disable_tqdm: bool = False,
    report_to: str | list[str] = "none",
    callbacks=(),
) -> Path:
    """Build a tiny Qwen2 + BPE tokenizer, fine-tune it with TRL's ``SFTTrainer`` into π_ref, save it in ``output_dir``.

    The loss is the completion-only NLL of uniformly random grammatical responses, so π_ref approximates the uniform
    distribution over the grammar given each prompt (its samples are diverse and mostly grammatical).
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from ..experiments.methods import finish_wandb
    from ..tiny import build_model, build_tokenizer

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer(corpus(seed=seed), vocab_size=400)
    model = build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, seed=seed)
    dataset = Dataset.from_list(sft_examples(train_prompts, num_examples, seed=seed))
    args = SFTConfig(
        output_dir=str(output_dir / "sft-run"),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        logging_steps=max(1, max_steps // 10),
        save_strategy="no",
        report_to=report_to,
        run_name="sft-reference",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=disable_tqdm,
        max_length=64,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=list(callbacks)
    )
    trainer.train()
    trainer.model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    finish_wandb(report_to)
    return output_dir
