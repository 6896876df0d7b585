"""The lab's preference dataset, built the way IPO assumes (Azar et al. 2023, §5: pairs y, y′ ~ μ, eq. 13–16).

For each training prompt x, both responses are sampled from the behaviour policy μ = π_ref, y₁, y₂ ~ μ(·|x), and the
annotator's label is sampled from the preference model, c ~ Bernoulli(v(y₁, y₂)). The preferred response becomes
``chosen``. The column ``q`` keeps v(chosen, rejected) = P(chosen ≻ rejected), the soft label IPO can regress on
(q < ½ when the sampled label went against v; q = ½ for a tie). ``r_chosen``/``r_rejected`` keep the hidden rewards
for analysis only; no method reads them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .evaluate import sample, seeded_rng

COLUMNS = ("prompt", "chosen", "rejected", "q", "r_chosen", "r_rejected")


def label_pairs(
    prompts: Sequence[str],
    first: Sequence[str],
    second: Sequence[str],
    preference_model,
    rng: random.Random,
) -> list[dict]:
    """Label each (x, y₁, y₂) with c ~ Bernoulli(v(y₁, y₂)); rows with chosen/rejected and q = v(chosen, rejected)."""
    if not (len(prompts) == len(first) == len(second)):
        raise ValueError("prompts, first and second must have the same length")
    rows = []
    for prompt, y1, y2 in zip(prompts, first, second, strict=True):
        v12 = preference_model(prompt, y1, y2)
        first_wins = rng.random() < v12
        chosen, rejected = (y1, y2) if first_wins else (y2, y1)
        rows.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "q": v12 if first_wins else 1.0 - v12,
                "r_chosen": preference_model.reward(prompt, chosen),
                "r_rejected": preference_model.reward(prompt, rejected),
            }
        )
    return rows


def build_preference_rows(
    ref_model,
    tokenizer,
    prompts: Sequence[str],
    pairs_per_prompt: int,
    preference_models: dict,
    max_new_tokens: int = 20,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
    progress_file=None,
) -> dict[str, list[dict]]:
    """One set of response pairs y₁, y₂ ~ π_ref per prompt, labelled once under each preference model.

    All label regimes share the same responses, so differences between them come from the labels alone.
    Returns ``{regime name: rows}``.
    """
    samples = sample(
        ref_model,
        tokenizer,
        list(prompts),
        num_samples=2 * pairs_per_prompt,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed + 1,
        desc="sampling pairs from π_ref" if progress else None,
        progress_file=progress_file,
    )
    # Consecutive samples of the same prompt form a pair.
    xs = samples.prompts[0::2]
    first, second = samples.completions[0::2], samples.completions[1::2]
    return {
        name: label_pairs(xs, first, second, model, seeded_rng(seed, "labels", name))
        for name, model in preference_models.items()
    }


def label_statistics(rows: Sequence[dict]) -> dict[str, float]:
    """How often the chosen response has the higher hidden reward, the tie rate, and the mean q."""
    n = len(rows)
    if n == 0:
        return {"pairs": 0, "agree": float("nan"), "ties": float("nan"), "mean_q": float("nan")}
    return {
        "pairs": n,
        "agree": sum(r["r_chosen"] > r["r_rejected"] for r in rows) / n,
        "ties": sum(r["r_chosen"] == r["r_rejected"] for r in rows) / n,
        "mean_q": sum(r["q"] for r in rows) / n,
    }
