"""trl_ipo.lab.experiments.report: tables, the logged target and the written report, against hand-written values.

The end-to-end runs of ``trl-ipo demo`` and ``trl-ipo compare`` (tests/test_demo.py) write reports too; these tests
keep the module in the fast tier with synthetic run records.
"""

import math
import struct

from trl_ipo.lab.experiments.records import RunRecord
from trl_ipo.lab.experiments.report import logged_target, markdown_table, text_table, write_report

DPI, WIDTH_IN, HEIGHT_IN, FRONTIER_HEIGHT_IN = 110, 5.5, 4.0, 4.2  # figure size per panel, as the module draws


def png_size(path):
    """(width, height) in pixels from a PNG's IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_markdown_table_formats_and_escapes_cells():
    rows = [
        {"label": "IPO β=0.1", "kl": 0.12345, "reward": 1234.6, "ok": True},
        {"label": "a|b", "kl": float("nan"), "reward": math.inf},
    ]
    columns = [("label", "run"), ("kl", "KL"), ("reward", "reward"), ("ok", "converged")]
    assert markdown_table(rows, columns).split("\n") == [
        "| run | KL | reward | converged |",
        "|---|---|---|---|",
        "| IPO β=0.1 | 0.123 | 1235 | True |",
        "| a\\|b | – | ∞ | – |",
    ]


def test_text_table_pads_each_column_to_its_widest_cell():
    rows = [{"label": "ipo", "kl": 0.5}, {"label": "dpo-long", "kl": None}]
    assert text_table(rows, [("label", "run"), ("kl", "KL")]).split("\n") == [
        "run       KL",
        "--------  -----",
        "ipo       0.500",
        "dpo-long  –",
    ]


def test_logged_target_is_the_mean_over_train_logs_only():
    history = [{"ipo/target": 2.0, "step": 1}, {"loss": 1.0}, {"ipo/target": 4.5}, {"eval_ipo/target": 9.0}]
    assert logged_target(history) == (2.0 + 4.5) / 2
    assert logged_target([{"loss": 1.0}, {"eval_ipo/target": 9.0}]) is None


def _run(method, label, group, beta, target):
    history = [{"step": s, "kl": 0.1 * s, "reward": 0.5 + 0.05 * s} for s in (0, 2, 4)]
    log_history = [{"step": s, "rewards/margins": beta * 0.3 * s, "ipo/target": target} for s in (1, 2, 3, 4)]
    log_history.append({"step": 4, "eval_rewards/margins": 9.0})  # an eval entry: no point of the margin curve
    final = {"label": label, "kl": history[-1]["kl"], "reward": history[-1]["reward"]}
    return RunRecord(
        name=label, label=label, method=method, beta=beta, labels=group, target=target, history=history,
        log_history=log_history, final=final,
    )  # fmt: skip


def test_write_report_draws_one_panel_per_group_and_lists_every_drawn_plot(tmp_path):
    runs = [_run("ipo", "IPO", "hard", 0.1, 5.0), _run("dpo", "DPO", "hard", 0.1, None)]
    runs.append(_run("ipo_soft", "IPO soft", "soft", 0.5, 0.8).to_dict())  # dicts are accepted as they are
    columns = [("label", "run"), ("kl", "KL"), ("reward", "reward")]
    written = write_report(tmp_path / "out", "Title", "Intro text.", runs, columns, reference={"reward": 0.4})

    assert set(written) == {"frontier", "kl_vs_step", "margins_vs_step", "reward_vs_step", "report"}
    groups = 2  # "hard" and "soft"
    for name in ("kl_vs_step", "margins_vs_step", "reward_vs_step"):
        assert png_size(written[name]) == (round(groups * WIDTH_IN * DPI), round(HEIGHT_IN * DPI)), name
    assert png_size(written["frontier"]) == (round(groups * WIDTH_IN * DPI), round(FRONTIER_HEIGHT_IN * DPI))

    lines = (tmp_path / "out" / "report.md").read_text().split("\n")
    assert lines[:6] == ["# Title", "", "Intro text.", "", "## Summary", ""]
    assert lines[6:11] == [
        "| run | KL | reward |",
        "|---|---|---|",
        "| IPO | 0.400 | 0.700 |",
        "| DPO | 0.400 | 0.700 |",
        "| IPO soft | 0.400 | 0.700 |",
    ]
    images = [line for line in lines if line.startswith("![")]
    assert images == [
        "![Reward vs KL frontier](frontier.png)",
        "![KL(π‖π_ref) vs step, per method and β](kl_vs_step.png)",
        "![Margin Δ vs step (IPO's mean target t/β as a line)](margins_vs_step.png)",
        "![Ground-truth reward vs step](reward_vs_step.png)",
    ]


def test_runs_without_measurements_give_a_report_without_plots(tmp_path):
    runs = [RunRecord(name="r", label="r", method="ipo", beta=0.1, labels="hard", final={"label": "r"})]
    written = write_report(tmp_path, "T", "I", runs, [("label", "run")])
    assert set(written) == {"report"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]
    assert written["report"].read_text().endswith("| r |\n\n## Plots\n")  # the table, then no plot section
