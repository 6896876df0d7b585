"""PNG plots of margins, targets, losses and rewards from runs' ``trainer_state.json``, without wandb.

Every ``Trainer`` run keeps its logs in ``trainer_state.json`` (``log_history``: one dict per logging step, eval
entries' keys prefixed ``eval_``). :func:`plot_runs` draws, for one or several runs on the same figures (DPO vs IPO,
β sweeps), a train and an eval panel of:

* ``margin.png``: the regressed margin Δ (``ipo/delta``, solid) and its target (``ipo/target``, dashed). With
  ``loss_form="paper"`` the target is t/β with t = q − ½ (symmetric) or q (Azar et al. 2023, eq. 16–17);
* ``residual.png``: ``ipo/residual`` = mean(Δ − target);
* ``loss.png``: the training / evaluation loss;
* ``reward_accuracy.png``: ``rewards/accuracies``, the fraction of pairs with β·ρ_w > β·ρ_l;
* ``logratios.png``: chosen (solid) and rejected (dashed) log-ratios ρ = log π_θ(y|x) − log π_ref(y|x), summed
  over the completion: TRL's ``rewards/chosen`` / ``rewards/rejected`` divided by β. β is the one recorded next to
  the state file that was read (the run folder's, or the checkpoint's own ``training_args.json``), never another
  run's: an old checkpoint is not rescaled by the β of a newer run in the same folder. When β is not known (not
  given and not recorded there) the rewards β·ρ themselves are drawn and the axis says so.
  β is never read from ``training_args.bin``: that file is a pickle, and unpickling can run code
  (see :mod:`trl_ipo.run_args`).

A stock ``trl.DPOTrainer`` run logs the ``ipo/*`` keys only when it was trained with
:class:`trl_ipo.callbacks.IPOMarginCallback`; runs lacking a panel's keys are left out of that panel and listed in
the result's ``skipped``.

Run folders are read as untrusted input: a state file over :data:`MAX_STATE_BYTES` is refused unread, and a file that
is not JSON, nests too deeply, or is not shaped like a Trainer state (a mapping whose ``log_history`` is a list of
mappings with numeric values) is an :class:`~trl_ipo.errors.InputError` naming the file. Each PNG is written to a
new temporary file and renamed into place, so a symbolic link planted in the output folder is replaced, never
written through.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .metric_keys import DELTA, RESIDUAL, TARGET
from .run_args import recorded_beta

STATE_FILE = "trainer_state.json"
MAX_STATE_BYTES = 64 * 1024 * 1024  # a Trainer state of a long run is a few MiB; larger files are refused unread
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Curve:
    """One metric of a panel: log key (without ``eval_``), legend name, line style."""

    key: str
    name: str
    style: str = "-"


@dataclass(frozen=True)
class Panel:
    filename: str
    title: str
    ylabel: str
    curves: tuple[Curve, ...]


PANELS: tuple[Panel, ...] = (
    Panel(
        "margin.png",
        "Margin Δ (solid) vs its target (dashed)",
        "Δ",
        (Curve(DELTA, "Δ"), Curve(TARGET, "target", "--")),
    ),
    Panel("residual.png", "Residual Δ − target", "mean(Δ − target)", (Curve(RESIDUAL, "residual"),)),
    Panel("loss.png", "Loss", "loss", (Curve("loss", "loss"),)),
    Panel(
        "reward_accuracy.png",
        "Reward accuracy",
        "fraction with ρ_w > ρ_l",
        (Curve("rewards/accuracies", "accuracy"),),
    ),
    Panel(
        "logratios.png",
        "Chosen (solid) and rejected (dashed) log-ratios",
        "log π_θ/π_ref",
        (Curve("rewards/chosen", "chosen"), Curve("rewards/rejected", "rejected", "--")),
    ),
)
_LOGRATIO_PANEL = "logratios.png"


@dataclass
class Run:
    """A run's log history, the label it gets in legends, and its β if known."""

    label: str
    path: Path
    log_history: list[dict]
    beta: float | None = None

    def series(self, key: str, split: str) -> tuple[list[float], list[float]]:
        """Steps and values of ``key`` in ``split`` (``eval`` reads ``eval_<key>``), in log order."""
        name = key if split == "train" else f"eval_{key}"
        steps, values = [], []
        for entry in self.log_history:
            if name in entry and "step" in entry:
                steps.append(float(entry["step"]))
                values.append(float(entry[name]))
        return steps, values


@dataclass
class PlotResult:
    """What :func:`plot_runs` wrote and drew.

    ``series[(filename, split, run_label, curve_name)]`` holds the (steps, values) read back from the drawn lines;
    ``skipped`` lists "run: panel (split) has no <key>" for the curves a run could not provide.
    """

    files: list[Path] = field(default_factory=list)
    series: dict[tuple[str, str, str, str], tuple[list[float], list[float]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def find_state_file(run_dir: str | Path) -> Path:
    """``trainer_state.json`` of a run: the file itself, ``RUN_DIR/trainer_state.json``, or the latest checkpoint's."""
    path = Path(run_dir)
    if path.is_file():
        return path
    if (path / STATE_FILE).is_file():
        return path / STATE_FILE
    checkpoints = sorted(
        (p for p in path.glob("checkpoint-*") if (p / STATE_FILE).is_file() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    if checkpoints:
        return checkpoints[-1] / STATE_FILE
    raise InputError(
        f"No {STATE_FILE} in {path} (nor in a checkpoint-* folder inside it). Pass a run's output_dir, one of its "
        f"checkpoints, or the {STATE_FILE} file; a run writes it at each save or with trainer.save_state()."
    )


def read_log_history(state_file: str | Path) -> list[dict]:
    """The ``log_history`` of a Trainer state file, checked; every problem is an :class:`InputError` naming the file.

    Refused: a file over :data:`MAX_STATE_BYTES` (not read), text that is not UTF-8 JSON or nests too deeply, a top
    level that is not a mapping, a ``log_history`` that is not a list of mappings, and a ``step`` or plotted metric
    that is not a number (e.g. a list).
    """
    path = Path(state_file)
    history = _log_history_of(path, _load_state_json(path))
    _check_history_entries(path, history)
    return history


def _load_state_json(path: Path):
    """The parsed JSON of a state file no larger than :data:`MAX_STATE_BYTES`; any failure is an InputError."""
    try:
        size = path.stat().st_size
        if size > MAX_STATE_BYTES:
            raise InputError(
                f"{path}: {size} bytes is larger than the {MAX_STATE_BYTES // 2**20} MiB a Trainer state file may "
                "have (MAX_STATE_BYTES); not read."
            )
        text = path.read_bytes().decode("utf-8")
        state = json.loads(text)
    except InputError:
        raise
    except RecursionError:
        raise InputError(f"{path}: the JSON nests too deeply to be a Trainer state file.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a JSON file: {err}") from None
    except OSError as err:
        raise InputError(f"{path} cannot be read: {err.strerror or err}") from None
    return state


def _log_history_of(path: Path, state) -> list:
    """The ``log_history`` list of a parsed state (a mapping that has one)."""
    if not isinstance(state, dict):
        raise InputError(f"{path} holds a JSON {type(state).__name__}, not a Trainer state (a mapping).")
    if "log_history" not in state:
        raise InputError(f"{path} has no log_history; is it a Trainer state file?")
    history = state["log_history"]
    if not isinstance(history, list):
        raise InputError(f"{path}: log_history must be a list of log entries, got a {type(history).__name__}.")
    return history


def _check_history_entries(path: Path, history: list) -> None:
    """Each entry is a mapping whose ``step`` and plotted metrics, where present, are numbers."""
    keys = {"step"} | {c.key for p in PANELS for c in p.curves} | {f"eval_{c.key}" for p in PANELS for c in p.curves}
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise InputError(
                f"{path}: log_history entry {i} must be a mapping, got {type(entry).__name__} {_short(entry)}."
            )
        for key in keys & entry.keys():
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise InputError(
                    f"{path}: log_history entry {i}, key {key!r} must be a number, got {type(value).__name__} "
                    f"{_short(value)}."
                )


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_plot_beta(beta, where: str) -> float | None:
    """A β given for plotting: None, or a finite number > 0 (returned as float)."""
    if beta is None:
        return None
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise InputError(f"{where} must be a finite number > 0 (the run's β), got {beta!r}.")
    return float(beta)


def load_run(run_dir: str | Path, label: str | None = None, beta: float | None = None) -> Run:
    """Read a run's ``log_history``; β from ``beta`` or else the ``training_args.json`` recorded next to the state file
    that is read (a checkpoint's own record for a checkpoint), never from another folder."""
    state_file = find_state_file(run_dir)
    history = read_log_history(state_file)
    folder = state_file.parent
    if beta is None:
        beta = recorded_beta(folder)
    name = label or (Path(run_dir).name if Path(run_dir).is_dir() else folder.name)
    return Run(label=name, path=folder, log_history=history, beta=beta)


def plot_runs(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    labels: list[str] | None = None,
    betas: list[float | None] | None = None,
    panels: list[str] | None = None,
) -> PlotResult:
    """Render the panels of :data:`PANELS` for ``run_dirs`` into ``out_dir`` (one PNG per panel, all runs on it).

    ``labels`` names the runs in the legends (default: folder names); ``betas`` gives each run's β for the
    log-ratio panel (default: read from ``training_args.json``); ``panels`` picks panels by file name or stem
    (default: all). Returns a :class:`PlotResult`.
    """
    if not run_dirs:
        raise InputError("plot_runs: give at least one run folder.")
    for name, values in (("labels", labels), ("betas", betas)):
        if values is not None and len(values) != len(run_dirs):
            raise InputError(f"plot_runs: {len(values)} {name} for {len(run_dirs)} runs; give one per run.")
    betas = [check_plot_beta(b, f"plot_runs: betas[{i}] (--beta)") for i, b in enumerate(betas or [])] or None
    chosen = _select_panels(panels)
    out = _output_folder(out_dir)
    runs = [
        load_run(path, labels[i] if labels else None, betas[i] if betas else None) for i, path in enumerate(run_dirs)
    ]
    _deduplicate_labels(runs)

    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    out.mkdir(parents=True, exist_ok=True)
    result = PlotResult()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel in chosen:
        fig = Figure(figsize=(11, 4))
        axes = fig.subplots(1, 2)
        drawn = 0
        for ax, split in zip(axes, SPLITS, strict=True):
            ylabels = set()
            for i, run in enumerate(runs):
                scale, ylabel = _scale(panel, run)
                ylabels.add(ylabel)
                for curve in panel.curves:
                    steps, values = run.series(curve.key, split)
                    if not steps:
                        result.skipped.append(f"{run.label}: {panel.filename} ({split}) has no {curve.key}")
                        continue
                    values = [v * scale for v in values]
                    (line,) = ax.plot(
                        steps,
                        values,
                        curve.style,
                        color=colors[i % len(colors)],
                        marker="o" if split == "eval" or len(steps) == 1 else None,
                        markersize=3,
                        label=f"{run.label} {curve.name}",
                    )
                    result.series[(panel.filename, split, run.label, curve.name)] = (
                        [float(x) for x in line.get_xdata()],
                        [float(y) for y in line.get_ydata()],
                    )
                    drawn += 1
            ax.set_title(f"{panel.title} — {split}", fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(" | ".join(sorted(ylabels)))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, f"no {split} logs", ha="center", va="center", transform=ax.transAxes)
        if drawn:
            path = out / panel.filename
            fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.22)
            _save_png(fig, path)
            result.files.append(path)
    return result


def _output_folder(out_dir) -> Path:
    """``out_dir`` as a Path; an existing file or a symbolic link there is an error naming it (the PNGs would be
    written through the link, wherever it points)."""
    out = Path(out_dir)
    if out.is_symlink():
        raise InputError(
            f"--out {str(out)!r} is a symbolic link (to {os.readlink(out)!r}); give the folder itself for the PNG files."
        )
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is an existing file, not a folder; give a folder for the PNG files.")
    return out


def _save_png(fig, path: Path) -> None:
    """Write into a new file next to ``path`` and rename it onto ``path``: a link at ``path`` is replaced, never
    followed."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            fig.savefig(stream, format="png", dpi=100)
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _select_panels(names: list[str] | None) -> list[Panel]:
    if names is None:
        return list(PANELS)
    by_name = {p.filename: p for p in PANELS} | {p.filename.removesuffix(".png"): p for p in PANELS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        choices = [p.filename.removesuffix(".png") for p in PANELS]
        raise InputError(f"Unknown panel(s) {unknown}; choose from {choices}.")
    return [by_name[n] for n in dict.fromkeys(names)]


def _scale(panel: Panel, run: Run) -> tuple[float, str]:
    """TRL's rewards are β·ρ: divide by β in the log-ratio panel when β is known."""
    if panel.filename != _LOGRATIO_PANEL:
        return 1.0, panel.ylabel
    if run.beta:
        return 1.0 / run.beta, panel.ylabel
    return 1.0, "β·log π_θ/π_ref (β unknown)"


def _deduplicate_labels(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for i, run in enumerate(runs):
        if seen[run.label] > 1:
            run.label = f"{run.label} [{i + 1}]"
