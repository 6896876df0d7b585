"""Markdown report with PNG plots for the lab's runs (``trl-ipo demo`` and ``trl-ipo compare``).

Input is a list of run records: :class:`trl_ipo.lab.experiments.records.RunRecord` objects or their
:meth:`~trl_ipo.lab.experiments.records.RunRecord.to_dict` dicts (the plotting helpers take the dicts).

Plots: the reward–KL frontier (final point per run, its trajectory faint), KL vs step per method and β, margin Δ vs
step (linear, or log-scaled with each IPO target t/β drawn as a line of the run's colour; DPO's logistic loss has no
finite target), reward vs step, and end KL against β per method. Figures are drawn on ``matplotlib.figure.Figure``
objects, so no global matplotlib state (backend, pyplot figures) is touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from .claims import margin_series
from .records import RunRecord, as_dicts

__all__ = [
    "logged_target",
    "margin_series",
    "markdown_table",
    "plot_frontier",
    "plot_kl_vs_beta",
    "plot_margins",
    "plot_over_steps",
    "text_table",
    "write_markdown",
    "write_report",
]

METHOD_COLORS = {"dpo": "tab:red", "ipo": "tab:blue", "ipo_soft": "tab:cyan", "rlhf": "tab:green", "reference": "black"}
LINESTYLES = ("-", "--", ":", "-.")


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` with ``columns`` = [(key, header)]; floats to 3 significant decimals."""
    header = "| " + " | ".join(_escape(h) for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_escape(_fmt(row.get(key))) for key, _ in columns) + " |")
    return "\n".join(lines)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def text_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """The same table in fixed-width text, for the terminal."""
    cells = [[h for _, h in columns]] + [[_fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def logged_target(log_history: Sequence[dict]) -> float | None:
    """Mean IPO target over a run's train logs (``ipo/target``: t/β in the paper form, 1/(2β) for hard labels)."""
    values = [float(e["ipo/target"]) for e in log_history if "ipo/target" in e and "eval_ipo/target" not in e]
    return sum(values) / len(values) if values else None


def _style(run: dict, index_in_method: int) -> dict:
    color = METHOD_COLORS.get(run.get("method"))
    return dict(color=color, linestyle=LINESTYLES[index_in_method % len(LINESTYLES)])


def _styles(runs: Sequence[dict]) -> list[dict]:
    seen: dict[str, int] = {}
    styles = []
    for run in runs:
        key = run.get("method", "")
        styles.append(_style(run, seen.get(key, 0)))
        seen[key] = seen.get(key, 0) + 1
    return styles


def _group(run: dict):
    return run.get("group", run.get("labels"))


def _groups(runs: Sequence[dict]) -> list[str]:
    groups = []
    for run in runs:
        if _group(run) not in groups:
            groups.append(_group(run))
    return groups


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _panels_per_regime(
    runs, path: Path, title: str, xlabel: str, ylabel: str, draw: Callable, height: float = 4.0, sharey: bool = True
) -> Path:
    """One panel per group of runs; ``draw(ax, runs_of_the_group, styles)`` fills each panel."""
    from matplotlib.figure import Figure

    groups = _groups(runs)
    styles = dict(zip(map(id, runs), _styles(runs), strict=True))
    fig = Figure(figsize=(5.5 * len(groups), height))
    axes = fig.subplots(1, len(groups), squeeze=False, sharey=sharey)
    for ax, group in zip(axes[0], groups, strict=True):
        draw(ax, [r for r in runs if _group(r) == group], styles)
        ax.set_title(f"{title} — {group}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_over_steps(runs: Sequence[dict], key: str, ylabel: str, path: Path, title: str) -> Path | None:
    """One panel per group: ``history[key]`` against step for every run."""
    runs = [r for r in runs if any(key in h for h in r.get("history", []))]
    if not runs:
        return None

    def draw(ax, group_runs, styles):
        for run in group_runs:
            hist = [h for h in run["history"] if key in h]
            xs, ys = [h["step"] for h in hist], [h[key] for h in hist]
            ax.plot(xs, ys, marker="o", ms=3, label=run["label"], **styles[id(run)])

    return _panels_per_regime(runs, path, title, "optimiser step", ylabel, draw, sharey=False)


def plot_margins(runs: Sequence[dict], path: Path, log_scale: bool = False) -> Path | None:
    """Δ (summed log-ratio margin on the training pairs) vs step; a run's ``target`` (IPO: mean t/β) as a line.

    With ``log_scale`` the Δ axis is logarithmic (points with Δ ≤ 0, early in training, are left out), so margins that
    settle and margins that keep growing separate over orders of magnitude.
    """
    runs = [r for r in runs if margin_series(r.get("log_history", []), r["beta"])[0]]
    if not runs:
        return None

    def draw(ax, group_runs, styles):
        for run in group_runs:
            steps, deltas = margin_series(run["log_history"], run["beta"])
            if log_scale:
                steps, deltas = [s for s, d in zip(steps, deltas, strict=True) if d > 0], [d for d in deltas if d > 0]
            style = styles[id(run)]
            ax.plot(steps, deltas, marker="o", ms=2, lw=1, label=run["label"], **style)
            target = run.get("target")
            if target is not None and (target > 0 or not log_scale):
                ax.axhline(
                    target,
                    color=style["color"],
                    linestyle=style["linestyle"],
                    alpha=0.6,
                    lw=1.5,
                    label=f"target t/β = {target:.3g}",
                )
        if log_scale:
            ax.set_yscale("log")

    title = "margin Δ, log scale" if log_scale else "margin Δ on training pairs"
    return _panels_per_regime(
        runs, path, title, "optimiser step", "Δ = log-ratio(chosen) − log-ratio(rejected)", draw, sharey=not log_scale
    )


def plot_frontier(
    runs: Sequence[dict], path: Path, reference: dict | None = None, oracle_reward: float | None = None
) -> Path | None:
    """Ground-truth reward vs KL(π‖π_ref): each run's trajectory (faint) and final point, one panel per group."""
    runs = [r for r in runs if any("reward" in h and "kl" in h for h in r.get("history", []))]
    if not runs:
        return None

    def draw(ax, group_runs, styles):
        for run in group_runs:
            hist = [h for h in run["history"] if "reward" in h and "kl" in h]
            style = styles[id(run)]
            xs, ys = [h["kl"] for h in hist], [h["reward"] for h in hist]
            ax.plot(xs, ys, alpha=0.3, color=style["color"], linestyle=style["linestyle"])
            ax.scatter([xs[-1]], [ys[-1]], color=style["color"], s=40, label=run["label"], zorder=3)
        if reference is not None:
            ax.scatter([0.0], [reference["reward"]], color="black", marker="*", s=90, label="π_ref", zorder=4)
        if oracle_reward is not None:
            ax.axhline(oracle_reward, color="gray", linestyle="--", lw=1, label="max reward")

    return _panels_per_regime(
        runs,
        path,
        "reward vs KL",
        "KL(π ‖ π_ref), nats per response (sample estimate)",
        "mean ground-truth reward (held-out prompts)",
        draw,
        height=4.2,
    )


def plot_kl_vs_beta(rows: Sequence[dict], path: Path, title: str = "end KL(π‖π_ref) against β") -> Path | None:
    """End KL ± s.e. against β for DPO and IPO; ``rows`` as from :func:`trl_ipo.lab.experiments.claims.kl_against_beta`.

    Log–log axes when every KL is positive (else the KL axis is symmetric-log, linear near 0).
    """
    if not rows:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.subplots()
    betas = [r["beta"] for r in rows]
    values = []
    for method, name in (("dpo", "DPO"), ("ipo", "IPO")):
        kls = [r[f"kl_{method}"] for r in rows]
        errors = [r.get(f"kl_{method}_stderr") or 0.0 for r in rows]
        values += kls
        ax.errorbar(betas, kls, yerr=errors, marker="o", capsize=4, color=METHOD_COLORS[method], label=name)
    ax.set_xscale("log")
    if min(values) > 0:
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xticks(betas)
    ax.set_xticklabels([f"{b:g}" for b in betas])
    ax.set_xlabel("β")
    ax.set_ylabel("KL(π ‖ π_ref) at the end, nats per response (± s.e.)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def write_report(
    output_dir: str | Path,
    title: str,
    intro: str,
    runs: Sequence[RunRecord | dict],
    columns: Sequence[tuple[str, str]],
    reference: dict | None = None,
    oracle_reward: float | None = None,
    extra_sections: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``report.md`` and the PNGs into ``output_dir``; returns the paths written (by name)."""
    runs = as_dicts(runs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "frontier": plot_frontier(runs, output_dir / "frontier.png", reference, oracle_reward),
        "kl_vs_step": plot_over_steps(runs, "kl", "KL(π ‖ π_ref) (nats)", output_dir / "kl_vs_step.png", "KL vs step"),
        "margins_vs_step": plot_margins(runs, output_dir / "margins_vs_step.png"),
        "reward_vs_step": plot_over_steps(
            runs, "reward", "mean ground-truth reward", output_dir / "reward_vs_step.png", "reward vs step"
        ),
    }
    captions = {
        "frontier": "Reward vs KL frontier",
        "kl_vs_step": "KL(π‖π_ref) vs step, per method and β",
        "margins_vs_step": "Margin Δ vs step (IPO's mean target t/β as a line)",
        "reward_vs_step": "Ground-truth reward vs step",
    }
    lines = [f"# {title}", "", intro, "", "## Summary", "", markdown_table([r["final"] for r in runs], columns), ""]
    lines += list(extra_sections)
    return write_markdown(output_dir, lines, {name: (path, captions[name]) for name, path in plots.items()})


def write_markdown(
    output_dir: str | Path, lines: Sequence[str], plots: dict[str, tuple[Path | None, str]]
) -> dict[str, Path]:
    """Write ``report.md``: ``lines``, then a "Plots" section showing each drawn plot (``name: (path, caption)``; a
    ``None`` path was not drawn). Returns the paths written by name, the plots' then ``"report"``."""
    written: dict[str, Path] = {}
    lines = [*lines, "## Plots", ""]
    for name, (path, caption) in plots.items():
        if path is not None:
            written[name] = path
            lines += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    report = Path(output_dir) / "report.md"
    report.write_text("\n".join(lines))
    written["report"] = report
    return written
