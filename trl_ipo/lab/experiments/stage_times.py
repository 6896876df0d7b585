"""Wall and CPU time per stage of a pipeline, each second counted once.

Stages nest: while an inner stage runs (e.g. an evaluation inside a training run), its time is charged to it and not
to the stage around it, so the stages' times add up to the time spent inside any stage. CPU time is the process's
user + system time (:func:`time.process_time`, every thread of the process), the measure that does not depend on how
many other jobs share the cores.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

__all__ = ["StageTimes"]


class StageTimes:
    """Exclusive wall and CPU seconds per named stage.

    ``with times.stage("sft"): ...`` charges the block to ``"sft"``; a stage entered inside another takes over until
    it ends. :meth:`as_dict` gives ``{stage: {"wall_s", "cpu_s", "calls"}}`` in first-use order plus ``"total"``.
    The clocks are arguments so that tests can drive them.
    """

    def __init__(
        self, wall_clock: Callable[[], float] = time.perf_counter, cpu_clock: Callable[[], float] = time.process_time
    ):
        self._wall_clock, self._cpu_clock = wall_clock, cpu_clock
        self._times: dict[str, dict[str, float]] = {}
        self._stack: list[str] = []
        self._mark = (0.0, 0.0)

    def _charge_running(self) -> None:
        now = (self._wall_clock(), self._cpu_clock())
        if self._stack:
            entry = self._times[self._stack[-1]]
            entry["wall_s"] += now[0] - self._mark[0]
            entry["cpu_s"] += now[1] - self._mark[1]
        self._mark = now

    @contextlib.contextmanager
    def stage(self, name: str):
        self._charge_running()
        entry = self._times.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0})
        entry["calls"] += 1
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge_running()
            self._stack.pop()

    def as_dict(self) -> dict[str, dict[str, float]]:
        """Each stage's seconds, and ``"total"``: their sums (the time spent inside any stage)."""
        stages = {name: dict(entry) for name, entry in self._times.items()}
        total = {
            "wall_s": sum(e["wall_s"] for e in stages.values()),
            "cpu_s": sum(e["cpu_s"] for e in stages.values()),
        }
        return {**stages, "total": total}
