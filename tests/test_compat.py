"""Paths that only the real TRL code exercises, kept in the compat selection (scripts/compat.sh).

The other online tests inject fixed completions; here λ = 0 samples through TRL's own
``OnlineDPOTrainer._generate``, whose return value is not the same across TRL releases.
"""

import pytest
import torch
from test_online_trainer import config_kwargs, prompt_dataset, soft_length_judge

from trl_ipo.online import OnlineIPOConfig, OnlineIPOTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_global_rng")


@pytest.mark.compat
def test_online_ipo_samples_through_trls_generate(load_model, tokenizer, tmp_path):
    sampled = {}
    judged = []

    class Recording(OnlineIPOTrainer):
        def _generate(self, model, prompts, images=None):
            out = super()._generate(model, prompts, images)
            sampled["ids"], sampled["mask"] = out[2].cpu(), out[3].cpu()
            return out

    def judge(prompts, completions_a, completions_b):
        judged.append(list(completions_a) + list(completions_b))
        return soft_length_judge(prompts, completions_a, completions_b)

    trainer = Recording(
        model=load_model(),
        args=OnlineIPOConfig(**config_kwargs(tmp_path, max_new_tokens=6)),
        train_dataset=prompt_dataset(),
        processing_class=tokenizer,
        judge=judge,
    )
    trainer.train()

    ids, mask = sampled["ids"], sampled["mask"]
    assert ids.shape[0] == 2 * len(prompt_dataset())  # rows a_0..a_B−1, b_0..b_B−1
    assert judged == [tokenizer.batch_decode(ids, skip_special_tokens=True)]
    log = trainer.state.log_history[0]
    assert log["online/completion_length"] == pytest.approx(mask.sum(dim=1).float().mean().item())
    eos = torch.isin(ids, torch.tensor([tokenizer.eos_token_id])) & mask.bool()
    assert log["online/contains_eos"] == pytest.approx(eos.any(dim=1).float().mean().item())
