"""Sampling-based evaluation of a policy against the hidden ground truth and against π_ref.

For held-out prompts x and responses sampled from the policy, y ~ π(·|x) (temperature 1, no top-k/top-p):

* mean ground-truth reward        E_x E_{y~π} r(x, y)                             (with its standard error)
* win rate against π_ref under v  E_x E_{y~π, y′~π_ref} v(y, y′)                  (ties ½; the reference scores ½)
* KL(π ‖ π_ref), sample estimate  E_x E_{y~π} [log π(y|x) − log π_ref(y|x)]       (sequence log-probs, EOS included)
* grammatical fraction            how much of the language the policy kept

The KL estimator is unbiased for the KL between the two sequence distributions as the sampler realises them
(stopping at EOS or at ``max_new_tokens``); its standard error is reported alongside. :class:`EvaluationCallback`
runs the same measurements every few optimisation steps of any ``transformers.Trainer`` (DPO, IPO, RLOO alike).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from .language import parse_response


@dataclass
class Samples:
    """Completions sampled for ``prompts`` (one per entry; prompts repeat when several samples per prompt)."""

    prompts: list[str]
    completions: list[str]
    prompt_ids: list[list[int]] = field(default_factory=list)
    completion_ids: list[list[int]] = field(default_factory=list)


# -------------------------------------------------------------------------------------------------- sampling / scoring
@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: Sequence[str],
    num_samples: int = 1,
    max_new_tokens: int = 20,
    batch_size: int = 64,
    seed: int = 0,
    desc: str | None = None,
    progress_file=None,
) -> Samples:
    """Draw ``num_samples`` completions per prompt from ``model`` by ancestral sampling at temperature 1.

    Completion ids run up to and including the first EOS (or ``max_new_tokens`` tokens if none was produced). With
    ``desc`` a progress bar is drawn on ``progress_file`` (default ``sys.stderr``).
    """
    was_training = model.training
    model.eval()
    expanded = [p for p in prompts for _ in range(num_samples)]
    out = Samples(prompts=[], completions=[])
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        batches = range(0, len(expanded), batch_size)
        for start in tqdm(batches, desc=desc, disable=desc is None, leave=False, file=progress_file):
            chunk = expanded[start : start + batch_size]
            encoded = [tokenizer(p)["input_ids"] for p in chunk]
            input_ids, attention_mask = _left_pad(encoded, pad)
            input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
            )[:, input_ids.size(1) :].tolist()
            for prompt, prompt_ids, ids in zip(chunk, encoded, generated, strict=True):
                completion = ids[: ids.index(eos) + 1] if eos in ids else ids
                out.prompts.append(prompt)
                out.prompt_ids.append(prompt_ids)
                out.completion_ids.append(completion)
                out.completions.append(tokenizer.decode(completion, skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    return out


@torch.no_grad()
def sequence_logps(
    model, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_token_id: int, batch_size: int = 64
) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over each completion's tokens (EOS included), float64, shape (N,)."""
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(prompt_ids), batch_size):
            chunk_prompts = prompt_ids[start : start + batch_size]
            chunk_completions = completion_ids[start : start + batch_size]
            rows = [p + c for p, c in zip(chunk_prompts, chunk_completions, strict=True)]
            lengths = [len(c) for c in chunk_completions]
            input_ids, attention_mask = _left_pad(rows, pad_token_id)
            input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
            logps = torch.log_softmax(logits[:, :-1].double(), dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
            width = logps.size(1)
            for i, n in enumerate(lengths):
                results.append(logps[i, width - n :].sum() if n else logps.new_zeros(()))
    finally:
        model.train(was_training)
    return torch.stack(results).cpu() if results else torch.zeros(0, dtype=torch.float64)


def kl_estimate(policy_logps: torch.Tensor, ref_logps: torch.Tensor) -> tuple[float, float]:
    """Monte-Carlo KL(π‖π_ref) from samples y ~ π: mean of log π(y) − log π_ref(y), and its standard error."""
    diff = (policy_logps - ref_logps).double()
    if diff.numel() == 0:
        raise ValueError("kl_estimate needs at least one sample")
    stderr = diff.std(unbiased=True).item() / math.sqrt(diff.numel()) if diff.numel() > 1 else float("nan")
    return diff.mean().item(), stderr


def score_completions(
    prompts: Sequence[str],
    completions: Sequence[str],
    ref_completions: Sequence[str],
    preference_model,
) -> dict[str, float]:
    """Mean ground-truth reward (and its standard error), win rate E v(y, y′) against paired reference completions,
    grammatical fraction."""
    if not prompts:
        raise ValueError("score_completions needs at least one prompt")
    if not (len(prompts) == len(completions) == len(ref_completions)):
        raise ValueError("prompts, completions and ref_completions must have the same length")
    rewards = [preference_model.reward(p, y) for p, y in zip(prompts, completions, strict=True)]
    wins = [preference_model(p, y, y_ref) for p, y, y_ref in zip(prompts, completions, ref_completions, strict=True)]
    valid = [parse_response(y) is not None for y in completions]
    n = len(prompts)
    mean = sum(rewards) / n
    stderr = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1) / n) if n > 1 else float("nan")
    return {"reward": mean, "reward_stderr": stderr, "win_rate": sum(wins) / n, "grammatical": sum(valid) / n}


def exact_kl_first_tokens(policy, ref, prompt_ids: list[int], eos_token_id: int, steps: int = 2) -> float:
    """Exact KL(π‖π_ref) between the sampler's distributions over completions of at most ``steps`` (1 or 2) tokens.

    KL = KL(p₁‖q₁) + Σ_{t₁ ≠ EOS} p₁(t₁) · KL(p₂(·|t₁) ‖ q₂(·|t₁)) (chain rule; a sequence stops at EOS). Used to
    check :func:`kl_estimate` against an enumeration.
    """
    if steps not in (1, 2):
        raise ValueError("steps must be 1 or 2")

    def next_logps(model, prefixes):
        ids = torch.tensor(prefixes, device=model.device)
        with torch.no_grad():
            return torch.log_softmax(model(input_ids=ids).logits[:, -1].double(), dim=-1).cpu()

    p1, q1 = next_logps(policy, [prompt_ids])[0], next_logps(ref, [prompt_ids])[0]
    kl = (p1.exp() * (p1 - q1)).sum().item()
    if steps == 1:
        return kl
    tokens = [t for t in range(p1.numel()) if t != eos_token_id]
    prefixes = [prompt_ids + [t] for t in tokens]
    p2, q2 = next_logps(policy, prefixes), next_logps(ref, prefixes)
    per_prefix = (p2.exp() * (p2 - q2)).sum(-1)
    return kl + (p1.exp()[tokens] * per_prefix).sum().item()


# ------------------------------------------------------------------------------------------------------- evaluation
class Evaluator:
    """Measures a policy on fixed held-out prompts against π_ref and the hidden ground truth.

    π_ref's own samples (one set, drawn once) are the opponents in the win rate, so every evaluation of every method
    faces the same reference completions.
    """

    def __init__(
        self,
        ref_model,
        tokenizer,
        prompts: Sequence[str],
        preference_model=None,
        samples_per_prompt: int = 8,
        max_new_tokens: int = 20,
        seed: int = 0,
        batch_size: int = 128,
    ):
        self.ref_model = ref_model
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.preference_model = preference_model
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = batch_size
        self.reference = (
            None
            if preference_model is None
            else sample(
                ref_model, tokenizer, self.prompts, samples_per_prompt, max_new_tokens, batch_size, seed + 10_000
            )
        )

    def evaluate(self, policy, desc: str | None = None) -> dict[str, float]:
        """reward (± reward_stderr), win_rate, grammatical, kl (± kl_stderr), length (mean tokens) of its samples.

        Without a preference model (a user's own task, no ground truth) only kl, kl_stderr and length.
        """
        samples = sample(
            policy,
            self.tokenizer,
            self.prompts,
            self.samples_per_prompt,
            self.max_new_tokens,
            self.batch_size,
            self.seed,
            desc,
        )
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        policy_logps = sequence_logps(policy, samples.prompt_ids, samples.completion_ids, pad, self.batch_size)
        ref_logps = sequence_logps(self.ref_model, samples.prompt_ids, samples.completion_ids, pad, self.batch_size)
        kl, kl_stderr = kl_estimate(policy_logps, ref_logps)
        metrics = {}
        if self.preference_model is not None:
            metrics = score_completions(
                samples.prompts, samples.completions, self.reference.completions, self.preference_model
            )
        length = sum(map(len, samples.completion_ids)) / len(samples.completion_ids)
        metrics.update(kl=kl, kl_stderr=kl_stderr, length=length)
        return metrics

    def evaluate_texts(self, policy_fn: Callable[[list[str]], list[str]]) -> dict[str, float]:
        """reward, win_rate and grammatical for a text-level policy (e.g. an oracle); no KL (no log-probs)."""
        if self.preference_model is None:
            raise ValueError("evaluate_texts needs a preference model (the ground truth)")
        completions = policy_fn(self.reference.prompts)
        return score_completions(self.reference.prompts, completions, self.reference.completions, self.preference_model)


class EvaluationCallback(TrainerCallback):
    """Evaluate the policy being trained at step 0, every ``every`` steps and at the end; records in ``history``.

    When a wandb run is active the measurements are also logged to it under ``lab/…`` against ``train/global_step``.
    """

    def __init__(self, evaluator: Evaluator, every: int, label: str = ""):
        self.evaluator = evaluator
        self.every = max(1, int(every))
        self.label = label
        self.history: list[dict[str, float]] = []

    def _run(self, model, step: int) -> None:
        if self.history and self.history[-1]["step"] == step:
            return
        metrics = self.evaluator.evaluate(model)
        metrics["step"] = step
        self.history.append(metrics)
        try:
            import wandb

            if wandb.run is not None:
                wandb.run.log({**{f"lab/{k}": v for k, v in metrics.items() if k != "step"}, "train/global_step": step})
        except ImportError:
            pass

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._run(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._run(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._run(model, state.global_step)


def _left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def seeded_rng(seed: int, *tags) -> random.Random:
    """A ``random.Random`` keyed by a seed and tags (stable across runs and Python versions)."""
    return random.Random("-".join(map(str, (seed, *tags))))
