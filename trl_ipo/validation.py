"""The two checks every setting shares: a value among fixed choices, and a boolean given as text (YAML, CLI, env).

Both raise :class:`~trl_ipo.errors.InputError` (a ``ValueError``) naming the field and the value.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import InputError

TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no")


def one_of(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices``, else an error naming the field ``name``, the choices and the value."""
    choices = list(choices)
    if value not in choices:
        raise InputError(f"{name} must be one of {choices}, got {value!r}.")
    return value


def parse_bool(name: str, value: str) -> bool:
    """'true'/'false' (any case), '1'/'0', 'yes'/'no' → bool; anything else is an error naming the field."""
    lowered = value.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise InputError(f"{name} must be true or false, got {value!r}.")
