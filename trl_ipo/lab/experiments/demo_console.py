"""The terminal of `trl-ipo demo`: stage lines, one progress bar per stage, and everything else in ``demo.log``."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

__all__ = ["Console", "step_bar_callback"]


class Console:
    """Stage lines and one progress bar per stage on the terminal; everything else into ``demo.log``.

    Inside :meth:`capture`, library output is sent to the log: ``sys.stdout``/``sys.stderr`` (prints, warnings,
    library progress bars), the handlers of the ``transformers``/``datasets`` loggers, and the library progress bars
    are switched off. Each change is undone on exit.
    """

    def __init__(self, log_path: Path, progress: bool):
        self.progress = progress
        self.terminal, self.terminal_err = sys.stdout, sys.stderr
        # Open for the console's whole life (every stage writes to it); closed by close().
        self.log = open(log_path, "w", buffering=1)  # noqa: SIM115

    def say(self, message: str) -> None:
        if self.progress:
            print(message, file=self.terminal, flush=True)
        print(message, file=self.log)

    def show(self, text: str) -> None:
        """Always on the terminal (the final tables), and in the log."""
        print(text, file=self.terminal, flush=True)
        print(text, file=self.log)

    def bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            desc=desc,
            file=self.terminal_err,
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
            unit="step",
        )

    @contextlib.contextmanager
    def capture(self):
        import logging
        import warnings

        import datasets.utils.logging as datasets_logging
        import transformers.utils.logging as transformers_logging

        swapped = []
        terminals = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__, self.terminal, self.terminal_err)
        for name in ("transformers", "datasets", "trl", "accelerate"):
            for handler in logging.getLogger(name).handlers:
                if type(handler) is logging.StreamHandler and handler.stream in terminals:
                    swapped.append((handler, handler.setStream(self.log)))
        bars = [(m, m.is_progress_bar_enabled()) for m in (datasets_logging, transformers_logging)]
        for module, _ in bars:
            module.disable_progress_bar()
        try:
            with contextlib.redirect_stdout(self.log), contextlib.redirect_stderr(self.log), warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            for module, enabled in bars:
                if enabled:
                    module.enable_progress_bar()
            for handler, stream in swapped:
                handler.setStream(stream)

    def close(self) -> None:
        self.log.close()


def step_bar_callback(bar):
    """A trainer callback that advances ``bar`` by one at every optimiser step."""
    from transformers import TrainerCallback

    class StepBar(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            bar.update(1)

    return StepBar()
