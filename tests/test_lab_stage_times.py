"""The demo's accounting of time per stage, and the fused LM head tiled to the vocabulary (same bits, restored)."""

import pytest
import torch

from trl_ipo.lab.experiments.demo_report import timing_rows
from trl_ipo.lab.experiments.stage_times import StageTimes


class FakeClock:
    """A clock that reads what the test sets."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_nested_stages_are_charged_once_to_the_innermost_stage():
    wall, cpu = FakeClock(), FakeClock()
    times = StageTimes(wall, cpu)

    def advance(w, c):
        wall.now += w
        cpu.now += c

    with times.stage("train"):
        advance(10, 4)
        with times.stage("evaluation"):
            advance(3, 1)
        advance(5, 2)
        with times.stage("evaluation"):
            advance(2, 2)
    advance(100, 100)  # outside every stage: not counted
    with times.stage("report"):
        advance(1, 0.5)
    got = times.as_dict()
    assert list(got) == ["train", "evaluation", "report", "total"]
    assert got["train"] == {"wall_s": 15, "cpu_s": 6, "calls": 1}
    assert got["evaluation"] == {"wall_s": 5, "cpu_s": 3, "calls": 2}
    assert got["report"] == {"wall_s": 1, "cpu_s": 0.5, "calls": 1}
    assert got["total"] == {"wall_s": 21, "cpu_s": 9.5}


def test_a_stage_that_raises_is_still_charged():
    wall, cpu = FakeClock(), FakeClock()
    times = StageTimes(wall, cpu)

    def failing_stage():
        with times.stage("sft"):
            wall.now, cpu.now = 2.0, 1.0
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        failing_stage()
    with times.stage("pairs"):
        wall.now, cpu.now = 3.0, 1.5
    assert times.as_dict()["sft"]["wall_s"] == 2.0
    assert times.as_dict()["pairs"]["cpu_s"] == 0.5


def test_timing_rows_round_to_a_tenth_of_a_second():
    rows = timing_rows(
        {"sft": {"wall_s": 12.345, "cpu_s": 6.06, "calls": 1}, "total": {"wall_s": 12.345, "cpu_s": 6.06}}
    )
    assert rows == [
        {"stage": "sft", "wall_s": "12.3", "cpu_s": "6.1"},
        {"stage": "total", "wall_s": "12.3", "cpu_s": "6.1"},
    ]


@pytest.mark.slow
def test_fused_lm_head_tiled_to_the_vocabulary_gives_the_same_bits_and_is_restored(load_model, tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    from trl_ipo._compat import fused_lm_head_tile, fused_lm_head_tile_width

    model = load_model()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.tensor([tokenizer("the cat sat on a mat")["input_ids"], tokenizer("a big red dog ran on")["input_ids"]])
    vocab = model.config.vocab_size

    def forward_backward():
        model.zero_grad()
        out = model(input_ids=ids, labels=ids, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out.log_probs.detach().clone(), model.lm_head.weight.grad.clone()

    default = fused_lm_head_tile_width()
    assert default > vocab  # the whole vocabulary already fits in one (much wider) tile
    logps, grad = forward_backward()
    with fused_lm_head_tile(vocab):
        assert fused_lm_head_tile_width() == vocab
        tiled_logps, tiled_grad = forward_backward()
    assert fused_lm_head_tile_width() == default
    assert torch.equal(logps, tiled_logps)
    assert torch.equal(grad, tiled_grad)
    # An independent computation: log-softmax of the full logits at the next token.
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].double()
    expected = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(tiled_logps.double(), expected, atol=1e-5)


def test_the_recorded_demo_run_carries_its_stage_times_and_its_report_shows_them():
    import json
    from pathlib import Path

    assets = Path(__file__).resolve().parents[1] / "docs" / "assets" / "demo"
    results = json.loads((assets / "results.json").read_text())
    timings = results["timings"]
    stages = ["sft", "pairs", "evaluation", "budget", "rlhf", "converged", "report"]
    assert list(timings) == [*stages, "total"]
    for clock in ("wall_s", "cpu_s"):
        assert timings["total"][clock] == pytest.approx(sum(timings[s][clock] for s in stages))
    assert timings["total"]["cpu_s"] <= results["cpu_time_s"]
    assert timings["evaluation"]["calls"] == 1 + sum(len(run["history"]) for run in results["runs"])
    report = (assets / "report.md").read_text()
    for row in timing_rows(timings):
        assert f"| {row['stage']} | {row['wall_s']} | {row['cpu_s']} |" in report
