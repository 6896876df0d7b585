"""The one user-error type of the project, and the one place that turns it into the CLI's exit-2 message.

Anything a user can get wrong — a flag, a YAML field, a config value, a file, a dataset row, a model path — is raised
as :class:`InputError` with a message naming the field, file, column, row and value. It subclasses ``ValueError``,
so Python callers that catch ``ValueError`` keep working. The command-line entry points report it with
:func:`report` as a single line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["InputError", "one_line", "report", "exit_on_input_error", "run_parsed"]

EXIT_USAGE = 2


class InputError(ValueError):
    """Bad input found before (or, for streamed rows, as) it is used; the message says what and where."""


def one_line(err: BaseException | str) -> str:
    """The text of ``err`` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(str(err).split())


def report(prog: str, err: BaseException | str) -> int:
    """Print ``PROG: error: MESSAGE`` as one line on stderr and return the exit status of a user error (2)."""
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
    return EXIT_USAGE


def exit_on_input_error(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body()``; an :class:`InputError` becomes :func:`report`'s one line and exit status 2."""
    try:
        return int(body() or 0)
    except InputError as err:
        return report(prog, err)


def run_parsed(prog: str, parser, argv: list[str], body: Callable[..., int | None]) -> int:
    """Parse ``argv`` with ``parser`` and run ``body(args)``: ``--help``'s exit status, ``body``'s (0 by default),
    or :func:`report`'s one line and exit status 2 for an :class:`InputError`."""

    def parsed_body():
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit_:  # --help
            return int(exit_.code or 0)
        return body(args)

    return exit_on_input_error(prog, parsed_body)
