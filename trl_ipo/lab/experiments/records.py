"""The run record: what one training run of `trl-ipo demo` or `trl-ipo compare` leaves behind.

:class:`RunRecord` is the one place its fields are defined; :meth:`RunRecord.to_dict` gives the dict that
``results.json`` stores under ``runs`` and that :mod:`trl_ipo.lab.experiments.report` and
:mod:`trl_ipo.lab.experiments.claims` read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

__all__ = ["RunRecord", "as_dicts"]

# Fields left out of the dict when unset: the demo's regime bookkeeping and compare's evaluation metrics.
_OPTIONAL = ("regime", "group", "pairs", "eval_metrics")


@dataclass
class RunRecord:
    """One training run.

    * ``name`` (run folder and id), ``label`` (legend text), ``method``, ``beta``, ``labels`` (label regime or split
      name);
    * ``regime`` (``"budget"`` or ``"converged"``), ``group`` (the panel a run is drawn in; default ``labels``) and
      ``pairs`` (training pairs): demo runs only;
    * ``target``: IPO's target t/β as logged by the trainer (``None`` where it has none, or Δ is not summed);
    * ``history``: measurements over optimisation steps (dicts with ``step`` and any of ``reward``, ``win_rate``,
      ``kl``, ``kl_stderr``, ``grammatical``), from :class:`trl_ipo.lab.world.evaluate.EvaluationCallback`;
    * ``log_history``: the trainer's log entries (``rewards/margins`` = β·Δ with Δ the summed log-ratio margin);
    * ``eval_metrics``: the trainer's held-out evaluation (compare runs only);
    * ``final``: the row of the summary table.
    """

    name: str
    label: str
    method: str
    beta: float
    labels: str
    regime: str | None = None
    group: str | None = None
    pairs: int | None = None
    target: float | None = None
    history: list[dict] = field(default_factory=list)
    log_history: list[dict] = field(default_factory=list)
    eval_metrics: dict | None = None
    final: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The record as stored in ``results.json``: every field in order, the unset optional ones left out."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if not (f.name in _OPTIONAL and getattr(self, f.name) is None)
        }


def as_dicts(runs) -> list[dict]:
    """Run records as dicts (:class:`RunRecord` converted by :meth:`RunRecord.to_dict`, dicts kept as they are)."""
    return [r.to_dict() if isinstance(r, RunRecord) else r for r in runs]
