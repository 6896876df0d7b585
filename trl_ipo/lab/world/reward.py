"""The hidden ground truth of the alignment lab: a reward r(x, y) computed in code and the preference model v on it.

Reward (never shown to the methods; they only see preference labels). For a prompt x = "the <subject> <verb>" and a
grammatical response y with phrases (a_1, n_1), …, (a_k, n_k) (adjective a_i possibly absent)::

    r(x, y) = 1/k · Σ_i ½ (A[subject, n_i] + B[verb, a_i])          ∈ [−1, 1]

with A and B fixed tables of numbers in [−1, 1] drawn from a seeded generator (the hidden "taste" of each animal for
things and of each action for qualities). An ungrammatical response gets ``INVALID_REWARD`` = −1.5, below every
grammatical one. The maximum over responses is ½ (max_n A[subject, n] + max_a B[verb, a]), reached by the one-phrase
response :func:`best_response`.

Preference model (Bradley–Terry on r, Rafailov et al. 2023 eq. 1, with a temperature)::

    v(y, y′) = σ((r(x, y) − r(x, y′)) / T)         noisy labels, temperature T > 0
    v(y, y′) = 1[r > r′] + ½ · 1[r = r′]          deterministic labels, the limit T → 0

Both satisfy v ∈ [0, 1], v(y, y) = ½ and v(y, y′) = 1 − v(y′, y), the properties of a preference probability that
IPO relies on (Azar et al. 2023, §5).
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

from .language import ADJECTIVES, NOUNS, SUBJECTS, VERBS, parse_prompt, parse_response, render_response

INVALID_REWARD = -1.5


@lru_cache(maxsize=8)
def reward_tables(seed: int = 0) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str | None], float]]:
    """The hidden tables A[subject, noun] and B[verb, adjective or None], numbers in [−1, 1] rounded to 0.01."""
    rng = random.Random(f"trl_ipo-lab-reward-{seed}")
    table_a = {(s, n): round(rng.uniform(-1, 1), 2) for s in SUBJECTS for n in NOUNS}
    table_b = {(v, a): round(rng.uniform(-1, 1), 2) for v in VERBS for a in (None, *ADJECTIVES)}
    return table_a, table_b


def reward(prompt: str, response: str, seed: int = 0) -> float:
    """Ground-truth r(x, y): the mean phrase score ½(A + B), or ``INVALID_REWARD`` if y is not grammatical."""
    subject, verb = parse_prompt(prompt)
    phrases = parse_response(response)
    if phrases is None:
        return INVALID_REWARD
    table_a, table_b = reward_tables(seed)
    return sum(0.5 * (table_a[subject, noun] + table_b[verb, adj]) for adj, noun in phrases) / len(phrases)


def best_response(prompt: str, seed: int = 0) -> str:
    """The highest-reward response to ``prompt`` (one phrase with the best noun and the best adjective choice)."""
    subject, verb = parse_prompt(prompt)
    table_a, table_b = reward_tables(seed)
    noun = max(NOUNS, key=lambda n: table_a[subject, n])
    adj = max((None, *ADJECTIVES), key=lambda a: table_b[verb, a])
    return render_response([(adj, noun)])


def max_reward(prompt: str, seed: int = 0) -> float:
    """max_y r(x, y) in closed form: ½ (max_n A[subject, n] + max_a B[verb, a])."""
    subject, verb = parse_prompt(prompt)
    table_a, table_b = reward_tables(seed)
    return 0.5 * (max(table_a[subject, n] for n in NOUNS) + max(table_b[verb, a] for a in (None, *ADJECTIVES)))


def preference_probability(r1: float, r2: float, temperature: float = 0.0) -> float:
    """v = P(y₁ ≻ y₂) from the two rewards: σ((r₁ − r₂)/T), or its T → 0 limit (1, ½ or 0) when T = 0."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = deterministic labels), got {temperature!r}")
    diff = r1 - r2
    if temperature == 0:
        return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
    z = diff / temperature
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class PreferenceModel:
    """v(y, y′ | x) for the lab's ground truth at a label temperature T (0 = deterministic)."""

    def __init__(self, temperature: float = 0.0, seed: int = 0):
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = deterministic labels), got {temperature!r}")
        self.temperature = float(temperature)
        self.seed = seed

    def reward(self, prompt: str, response: str) -> float:
        return reward(prompt, response, self.seed)

    def __call__(self, prompt: str, response: str, other: str) -> float:
        """v(y, y′) = P(response ≻ other | prompt)."""
        return preference_probability(self.reward(prompt, response), self.reward(prompt, other), self.temperature)

    @property
    def name(self) -> str:
        return "deterministic" if self.temperature == 0 else f"noisy (T={self.temperature:g})"
