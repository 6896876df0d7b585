"""Keeping credentials out of every file and run record trl_ipo writes.

A value is treated as a secret when the *name* it is stored under says so: the last word of the name (split on
``_``, ``-``, ``.`` and camelCase, compared case-insensitively) is one of :data:`SECRET_WORDS` — ``hub_token``,
``token``, ``api_key``, ``apiKey``, ``client_secret``, ``password``. Only the last word counts, so names that merely
mention one of these words are kept: ``max_key_length``, ``pad_token_id``, ``token_count``, ``secret_name``. The
tokenizer's special-token fields (``pad_token``, ``eos_token``, …) hold vocabulary strings, not credentials, and are
kept too. ``None``, ``True``/``False`` (e.g. ``token=True``: "use the cached login") and placeholders that are
already masked (transformers' ``<HUB_TOKEN>``) are never masked.

:func:`redact` masks such values at any depth of nested mappings and lists; :func:`scrub_argv` does the same for a
command line (``--hub_token X``, ``--hub_token=X`` and secrets inside a JSON-valued flag such as
``--model_init_kwargs '{"token": …}'``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

MASK = "<REDACTED>"
SECRET_WORDS = frozenset({"token", "key", "secret", "password", "passwd", "apikey", "credential", "credentials"})
SPECIAL_TOKEN_FIELDS = frozenset(
    {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token"}
)
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")


def is_secret_name(name) -> bool:
    """Whether a value stored under ``name`` is a credential (see the module docstring for the rule)."""
    if not isinstance(name, str):
        return False
    words = [w for w in _SPLIT.split(_CAMEL.sub(r"\1_\2", name).lower()) if w]
    return bool(words) and words[-1] in SECRET_WORDS and name.lower() not in SPECIAL_TOKEN_FIELDS


_PLACEHOLDER = re.compile(r"<[A-Z0-9_]+>")


def _maskable(value) -> bool:
    """Not None, not a bool, and not already a placeholder such as transformers' ``<HUB_TOKEN>``."""
    if isinstance(value, str) and _PLACEHOLDER.fullmatch(value):
        return False
    return value is not None and not isinstance(value, bool)


def redact(value, mask=MASK, _depth: int = 0):
    """A copy of ``value`` with every secret-named entry of every nested mapping replaced by ``mask``.

    Mappings become plain dicts and tuples become lists; other values are returned as they are. Nesting deeper than
    100 levels is cut (replaced by ``mask``) rather than followed.
    """
    if _depth > 100:
        return mask
    if isinstance(value, Mapping):
        return {
            k: (mask if is_secret_name(k) and _maskable(v) else redact(v, mask, _depth + 1)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, mask, _depth + 1) for v in value]
    return value


def redact_state(state: dict) -> dict:
    """An object's ``__dict__`` for pickling: top-level secret fields become ``None``, nested ones :data:`MASK`."""
    return {k: (None if is_secret_name(k) and _maskable(v) else redact(v)) for k, v in state.items()}


def scrub_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of every secret-named flag masked, also inside a JSON object given as a flag value."""
    out = list(argv)
    for i, arg in enumerate(out):
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.partition("=")
        if is_secret_name(name.lstrip("-")):
            if eq:
                out[i] = f"{name}={MASK}"
            elif i + 1 < len(out) and not out[i + 1].startswith("--"):
                out[i + 1] = MASK
        elif eq:
            out[i] = f"{name}={_scrub_json(value)}"
    for i, arg in enumerate(out):  # values of JSON-valued flags: '{"token": "..."}'
        if not arg.startswith("-"):
            out[i] = _scrub_json(arg)
    return out


def _scrub_json(text: str) -> str:
    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    redacted = redact(value)
    return text if redacted == value else json.dumps(redacted)
