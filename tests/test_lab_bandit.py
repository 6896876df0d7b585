"""Gradient-based IPO/DPO on the softmax bandit (trl_ipo.lab.theory.bandit) and ``trl-ipo bandit``, checked against the
closed form of trl_ipo.lab.theory.finite, autograd through trl_ipo.losses.ipo_loss, and hand-written statistics."""

import json
import math

import numpy as np
import pytest
import torch

from trl_ipo.lab.theory.bandit import (
    D1,
    PAPER_TAUS,
    dpo_bandit_loss,
    ipo_bandit_loss,
    parse_pairs,
    plot_curves,
    render_table,
    run_bandit,
    student_t_975,
    summarise,
    train_softmax_bandit,
)
from trl_ipo.lab.theory.finite import ipo_closed_form
from trl_ipo.losses import ipo_loss

F64 = torch.float64


@pytest.fixture(scope="module")
def paper_run():
    """The paper's Figure 1 setting in full: D1, uniform reference, 5 τ, 10 seeds, Adam 0.01, batch 9, 18k steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_bandit(record_every=1000)
    finally:
        torch.set_num_threads(threads)


def test_paper_setting_ipo_matches_closed_form_and_dpo_goes_deterministic(paper_run):
    """The gradient IPO policy (mean over 10 seeds) ends within 0.01 of the exact policy
    softmax(1/(3τ), 0, −1/(3τ)) per action for every τ; DPO puts more than 0.99 on action a for every τ ≤ 2."""
    ipo = paper_run.final[paper_run.method_index("ipo")]  # (S, T, K)
    dpo = paper_run.final[paper_run.method_index("dpo")]
    assert paper_run.steps == 18_000
    assert paper_run.batch_size == 9
    assert paper_run.lr == 0.01
    assert len(paper_run.seeds) == 10
    assert paper_run.taus == PAPER_TAUS
    for j, tau in enumerate(paper_run.taus):
        u = torch.tensor([1 / (3 * tau), 0.0, -1 / (3 * tau)], dtype=F64)  # written out, uniform reference
        exact = torch.exp(u) / torch.exp(u).sum()
        torch.testing.assert_close(paper_run.closed_form[j], exact, rtol=0, atol=1e-12)
        gap = (ipo[:, j].mean(0) - exact).abs().max()
        assert gap < 0.01, f"τ={tau}: gradient IPO is {gap:.4f} away from the closed form"
        if tau <= 2:
            assert dpo[:, j, 0].min() > 0.99, f"τ={tau}: DPO π(a) = {dpo[:, j, 0].min():.4f}"
    # IPO stays regularised: π(a) falls with τ, whereas DPO keeps it above IPO's at every τ.
    ipo_top = ipo[:, :, 0].mean(0)
    assert (ipo_top[1:] < ipo_top[:-1]).all()
    assert (dpo[:, :, 0].mean(0) > ipo_top).all()


def test_curves_start_at_reference_and_end_at_final(paper_run):
    curves = paper_run.curves
    assert paper_run.recorded_steps[0] == 0
    assert paper_run.recorded_steps[-1] == 18_000
    torch.testing.assert_close(curves[0], torch.full_like(curves[0], 1 / 3))
    torch.testing.assert_close(curves.sum(-1), torch.ones_like(curves.sum(-1)))


def test_table_cells_are_mean_and_student_t_interval(paper_run):
    """The table's mean ± 95% CI, recomputed here with numpy: t_{0.975, 9} = 2.262, half = t·sd/√n."""
    table = render_table(paper_run)
    final = paper_run.final.numpy()
    for j, tau in enumerate(paper_run.taus):
        for m, method in enumerate(paper_run.methods):
            values = final[m, :, j, 0]
            half = 2.262 * values.std(ddof=1) / math.sqrt(len(values))
            name = {"ipo": "IPO (Adam)", "dpo": "DPO (Adam)"}[method]
            assert f"| {tau:g} | {name} | {values.mean():.4f} ± {half:.4f} |" in table
        exact = " | ".join(f"{x:.4f}" for x in paper_run.closed_form[j].tolist())
        assert f"| {tau:g} | IPO exact (L⁺b) | {exact} |" in table


def test_plot_is_a_small_png_with_one_panel_per_tau(tmp_path):
    small = run_bandit(taus=(0.1, 1.0, 10.0), seeds=(0, 1), steps=60, record_every=20)
    path = tmp_path / "curves.png"
    plot_curves(small, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) < 300_000
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 2 * height  # three panels side by side


def test_student_t_quantiles():
    assert student_t_975(1) == 12.706
    assert student_t_975(9) == 2.262
    assert student_t_975(1000) == 1.96
    assert math.isnan(student_t_975(0))
    one_seed = run_bandit(taus=(1.0,), seeds=(0,), steps=5, record_every=5)
    assert torch.isnan(summarise(one_seed)["ipo"]["ci95"]).all()


def _autograd_runs(pairs, reference, taus, seeds, methods, preference, symmetric, steps, batch_size, lr):
    """Final policies (M, S, T, K), one run at a time: autograd through trl_ipo.losses.ipo_loss (IPO) or the DPO
    cross-entropy written out, stepped by torch.optim.Adam; the batches drawn as the bandit documents them."""
    pairs = torch.tensor(pairs)
    log_ref = torch.log(reference)
    q_all = None if preference is None else torch.tensor(preference, dtype=F64)
    final = torch.zeros(len(methods), len(seeds), len(taus), len(reference), dtype=F64)
    for s, seed in enumerate(seeds):
        batches = torch.randint(len(pairs), (steps, batch_size), generator=torch.Generator().manual_seed(seed))
        for m, method in enumerate(methods):
            for j, tau in enumerate(taus):
                logits = log_ref.clone().requires_grad_(True)
                optimiser = torch.optim.Adam([logits], lr=lr)
                for batch in batches:
                    logp = torch.log_softmax(logits, 0)
                    w, l = pairs[batch, 0], pairs[batch, 1]
                    q = None if q_all is None else q_all[batch]
                    if method == "ipo":
                        chosen, rejected = logp[w] - log_ref[w], logp[l] - log_ref[l]
                        loss = ipo_loss(chosen, rejected, tau, q, symmetric=symmetric).mean()
                    else:
                        sig = torch.sigmoid(tau * (logp[w] - logp[l] - log_ref[w] + log_ref[l]))
                        q = torch.ones_like(sig) if q is None else q
                        loss = -(q * torch.log(sig) + (1 - q) * torch.log(1 - sig)).mean()
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                final[m, s, j] = torch.softmax(logits.detach(), 0)
    return final


@pytest.mark.parametrize(("preference", "symmetric"), [(None, True), ([0.9, 0.6, 0.8], True), ([0.9, 0.6, 0.8], False)])
def test_written_out_gradients_equal_autograd_through_ipo_loss(preference, symmetric):
    """The batched loop with written-out gradients is, to rounding, one autograd run per (method, seed, τ) through
    trl_ipo.losses.ipo_loss (and the DPO cross-entropy) stepped by torch.optim.Adam, over 150 steps."""
    reference = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    taus, seeds, steps = (0.1, 1.0, 10.0), (0, 1), 150
    recorded, curves = train_softmax_bandit(
        D1, reference, taus, seeds, preference=preference, symmetric=symmetric, steps=steps, record_every=50
    )
    assert recorded.tolist() == [0, 50, 100, 150]
    expected = _autograd_runs(D1, reference, taus, seeds, ("ipo", "dpo"), preference, symmetric, steps, 9, 0.01)
    torch.testing.assert_close(curves[-1], expected, rtol=0, atol=1e-10)
    assert (curves[-1] - curves[0]).abs().max() > 0.05  # the runs moved


def test_bandit_losses_equal_the_written_formulas():
    delta = torch.linspace(-3, 3, 13, dtype=F64)
    tau = torch.tensor([[0.1], [2.0]], dtype=F64)
    q = torch.rand(13, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ipo_bandit_loss(delta, tau, q), (delta - (q - 0.5) / tau) ** 2)
    torch.testing.assert_close(ipo_bandit_loss(delta, 2.0, None), ipo_loss(delta, torch.zeros_like(delta), 2.0))
    sig = torch.sigmoid(tau * delta)
    torch.testing.assert_close(dpo_bandit_loss(delta, tau, q), -(q * torch.log(sig) + (1 - q) * torch.log(1 - sig)))
    torch.testing.assert_close(dpo_bandit_loss(delta, tau), -torch.log(sig))


def test_soft_labels_gradient_equals_closed_form_and_tie_keeps_reference_ratio():
    """With q per pair (a repeated pair included, non-uniform reference), the Adam solution averaged
    over seeds equals the closed form L⁺b within 0.01 per action; the tie c–d (q = ½) stays at the reference ratio."""
    reference = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=F64)
    pairs = [(0, 1), (1, 2), (0, 2), (0, 2), (2, 3)]
    q = [0.9, 0.7, 0.8, 0.6, 0.5]
    taus = (0.25, 1.0, 4.0)
    result = run_bandit(
        pairs=pairs,
        actions="abcd",
        reference=reference,
        taus=taus,
        seeds=range(8),
        methods=("ipo",),
        preference=q,
        steps=6000,
        record_every=6000,
    )
    ipo = result.final[0]  # (S, T, K)
    for j, tau in enumerate(taus):
        exact = ipo_closed_form(pairs, reference, tau, preference=q).policy
        torch.testing.assert_close(result.closed_form[j], exact)
        gap = (ipo[:, j].mean(0) - exact).abs().max()
        assert gap < 0.01, f"τ={tau}: {gap:.4f}"
        assert float(exact[2] / exact[3]) == pytest.approx(0.5, rel=1e-12)  # reference ratio 0.2 / 0.4
        tie_logratio = torch.log(ipo[:, j, 2] / ipo[:, j, 3]) - math.log(0.5)
        assert abs(float(tie_logratio.mean())) < 0.03
    # the soft labels do move the triangle: π(a)/π(b) is far from its reference ratio ⅓ at τ = 0.25
    assert float((ipo[:, 0, 0] / ipo[:, 0, 1]).mean()) > 0.6


def test_seeds_are_reproducible_and_independent_of_the_other_runs():
    one = run_bandit(taus=(1.0,), seeds=(3,), steps=200, record_every=200)
    many = run_bandit(taus=(0.5, 1.0), seeds=(1, 3), steps=200, record_every=200)
    torch.testing.assert_close(one.final[:, 0, 0], many.final[:, 1, 1], rtol=0, atol=0)
    assert not torch.equal(many.final[:, 0, 1], many.final[:, 1, 1])


def test_parse_pairs_and_bad_inputs():
    assert parse_pairs("a>b, b>c,a>c") == (("a", "b", "c"), ((0, 1), (1, 2), (0, 2)))
    with pytest.raises(ValueError, match="'ab'"):
        parse_pairs("ab")
    with pytest.raises(ValueError, match="tau"):
        run_bandit(taus=(0.0,), steps=1)
    with pytest.raises(ValueError, match="one q in \\[0, 1\\] per pair"):
        run_bandit(preference=[1.0, 2.0, 0.5], steps=1)
    with pytest.raises(ValueError, match="methods"):
        run_bandit(methods=("kto",), steps=1)
    with pytest.raises(ValueError, match="strictly positive"):
        run_bandit(reference=[0.5, 0.5, 0.0], steps=1)


def test_command_writes_table_and_json(tmp_path, capsys):
    from trl_ipo.commands import bandit as command

    out = tmp_path / "out"
    argv = [
        "--out",
        str(out),
        "--steps",
        "300",
        "--seeds",
        "3",
        "--taus",
        "0.5,2",
        "--record-every",
        "100",
        "--pairs",
        "x>y,y>z",
        "--preference",
        "0.9,0.7",
        "--reference",
        "0.2,0.3,0.5",
        "--no-plot",
    ]
    assert command.main(argv) == 0
    printed = capsys.readouterr().out
    table = (out / "bandit_table.md").read_text()
    assert table.strip() in printed
    results = json.loads((out / "bandit_results.json").read_text())
    assert results["setting"]["pairs"] == [["x", "y"], ["y", "z"]]
    assert not (out / "bandit_curves.png").exists()  # --no-plot; the PNG itself is checked above

    expected = run_bandit(
        pairs=[(0, 1), (1, 2)],
        actions="xyz",
        reference=[0.2, 0.3, 0.5],
        taus=(0.5, 2.0),
        seeds=range(3),
        preference=[0.9, 0.7],
        steps=300,
        record_every=100,
    )
    means = summarise(expected)["ipo"]["mean"]
    np.testing.assert_allclose(results["final"]["ipo"]["2.0"]["mean"], means[1].numpy(), atol=1e-12)
    # a tree is fitted exactly: y/z at τ = 2 is (0.3/0.5)·exp(0.2/2)
    cf = results["closed_form_ipo"]["2.0"]
    assert cf[1] / cf[2] == pytest.approx(0.6 * math.exp(0.1), rel=1e-12)


def test_command_rejects_bad_arguments(tmp_path, capsys):
    from trl_ipo.commands import bandit as command

    assert command.main(["--out", str(tmp_path), "--preference", "0.5", "--steps", "1"]) == 2
    assert "--preference has 1 values but --pairs has 3 pairs" in capsys.readouterr().err
    assert command.main(["--out", str(tmp_path), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.main(["--taus", "a,b"])
