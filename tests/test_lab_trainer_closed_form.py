"""The real trainers on a language model whose responses are single tokens, against the exact finite-action solution.

One prompt x, K = 3 responses y_k = (w_k, EOS) (TRL appends the end token to non-conversational completions), the
IPO paper's dataset D1 = {(a, b), (b, c), (a, c)} (Azar et al. 2023 §5.4). With ``logp_reduction="sum"`` the
trainer's margin is the difference of sequence log-ratios, so full-batch training minimises the least-squares loss
whose minimiser is u* = L⁺ b (:func:`trl_ipo.lab.theory.finite.ipo_closed_form`); the model's probabilities of the K
complete responses, renormalised over the K, must then equal π* ∝ π̃_ref · exp(u*), where π̃_ref is the
reference model's renormalised probabilities of the same K sequences. TRL's DPO on the same data has no finite
optimum (σ(βΔ) → 1 needs Δ → ∞; docs/theory.md, "DPO") and drives the top response towards probability 1.
"""

import copy

import pytest
import torch
from conftest import cpu_args
from datasets import Dataset
from single_token import build_word_tokenizer, pair_rows, response_distribution, response_ids
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from trl_ipo import IPOConfig, IPOTrainer
from trl_ipo.lab.theory.bandit import D1
from trl_ipo.lab.theory.finite import ipo_closed_form
from trl_ipo.lab.tiny import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")  # Trainer reseeds the generators

WORDS = ("a", "b", "c")
BETA = 0.5
SOFT_Q = (0.8, 0.7, 0.9)
STEPS = 50
TOL = 0.02


class ResponseCurve(TrainerCallback):
    """The renormalised response distribution after every optimiser step."""

    def __init__(self, tokenizer):
        self.tokenizer, self.curve = tokenizer, []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.curve.append(response_distribution(model, self.tokenizer, WORDS))


def _train(trainer_cls, config_cls, tmp_path, preference=None, **overrides):
    tokenizer = build_word_tokenizer(WORDS)
    model = build_model(tokenizer, hidden_size=8, num_layers=1, num_heads=2, seed=0)
    with torch.no_grad():  # sharper output layer: a clearly non-uniform reference over the K responses
        model.lm_head.weight.mul_(8.0)
    reference = copy.deepcopy(model).eval()
    rows = pair_rows(WORDS, D1, preference)
    args = config_cls(
        **cpu_args(
            tmp_path,
            per_device_train_batch_size=len(rows),  # full batch: every pair in every step
            learning_rate=0.03,
            max_steps=STEPS,
            logging_steps=STEPS,
            beta=BETA,
            **overrides,
        )
    )
    trainer = trainer_cls(
        model=model, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    # The trainer's own tokenisation is the format the helper reads: completion = (word, EOS) after the prompt.
    ids = response_ids(tokenizer, WORDS)
    for row, (w, l) in zip(trainer.train_dataset, D1, strict=True):
        assert row["prompt_ids"] == ids[w, :1].tolist()
        assert row["chosen_ids"] == ids[w, 1:].tolist()
        assert row["rejected_ids"] == ids[l, 1:].tolist()
    pi_ref = response_distribution(reference, tokenizer, WORDS)
    curve = ResponseCurve(tokenizer)
    trainer.add_callback(curve)
    trainer.train()
    return pi_ref, response_distribution(trainer.model, tokenizer, WORDS), torch.stack(curve.curve)


@pytest.mark.parametrize("preference", [None, SOFT_Q], ids=["hard", "soft"])
def test_ipo_trainer_matches_closed_form(tmp_path, preference):
    extra = {} if preference is None else {"preference_column": "q"}
    pi_ref, pi, curve = _train(IPOTrainer, IPOConfig, tmp_path, preference, logp_reduction="sum", **extra)
    expected = ipo_closed_form(D1, pi_ref, BETA, preference).policy
    torch.testing.assert_close(pi, expected, rtol=0, atol=TOL)
    # Hand check of the closed form for hard labels: u* = (1/(3β), 0, −1/(3β)) (D1 of paper §5.4).
    if preference is None:
        u = torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64) / (3 * BETA)
        torch.testing.assert_close(expected, torch.softmax(pi_ref.log() + u, 0))
    # The test discriminates: the reference weighting matters by more than the tolerance ...
    uniform = ipo_closed_form(D1, torch.full((3,), 1 / 3, dtype=torch.float64), BETA, preference).policy
    assert (uniform - expected).abs().max() > 2 * TOL
    # ... and the policy really moved from the reference to get there.
    assert (pi_ref - expected).abs().max() > 5 * TOL
    # Converged, not passing through: the last tenth of training stays within the tolerance.
    assert (curve[-STEPS // 10 :] - expected).abs().max() < TOL


def test_dpo_trainer_drifts_to_deterministic(tmp_path):
    pi_ref, pi, curve = _train(DPOTrainer, DPOConfig, tmp_path, loss_type=["sigmoid"])
    ipo = ipo_closed_form(D1, pi_ref, BETA).policy
    # Same data, same β: DPO's top response leaves IPO's regularised optimum far behind and heads to 1.
    assert int(pi.argmax()) == 0
    assert int(ipo.argmax()) == 0
    assert pi[0] > 0.99 > ipo[0] + 0.3
    top = curve[:, 0]
    assert (top[1:] >= top[:-1] - 1e-6).all()  # it only ever grows: no finite optimum to settle on
