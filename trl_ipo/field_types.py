"""Checking a value against a dataclass field's annotation, at any depth, before the dataclass sees it.

``trl-ipo train`` reads YAML, whose values reach the argument dataclasses as they are (argparse converts only
strings). A number where text belongs (``dataset_name: 123``), a list for a text field, text where a mapping
belongs (``model_init_kwargs: float32``) or a set or date nested in a mapping would otherwise fail late, with a
traceback, or never. :func:`type_problem` says where (``model_init_kwargs.quantization_config.bits``), what was
expected and what was found.

Strings given for numbers, booleans and enumerations are left to argparse, which converts and checks them; a string
given for a ``*_kwargs`` mapping must hold a JSON object (that is how the command line passes one).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import numbers
import types
import typing
from typing import Any

MAX_DEPTH = 64  # a configuration nested deeper than this is refused rather than walked


class Problem(typing.NamedTuple):
    path: str
    expected: str
    value: Any


def field_hints(dataclass_types) -> dict[str, Any]:
    """``{field name: annotation}`` of the init fields of ``dataclass_types`` (the first class naming a field wins)."""
    hints: dict[str, Any] = {}
    for cls in dataclass_types:
        resolved = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                hints.setdefault(f.name, resolved.get(f.name, Any))
    return hints


def is_json_kwargs_field(name: str) -> bool:
    """Mapping fields that the command line passes as JSON text (``--model_init_kwargs '{"dtype": "bfloat16"}'``)."""
    return name.endswith("_kwargs")


def type_problem(name: str, hint, value) -> Problem | None:
    """The first place where ``value`` does not fit ``hint`` (None when it fits), for the field called ``name``."""
    if is_json_kwargs_field(name) and isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return Problem(name, "a mapping (in a string: a JSON object)", value)
        if not isinstance(value, dict):
            return Problem(name, "a mapping (in a string: a JSON object)", value)
    return _check(hint, value, name, 0)


def _describe(hint) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin is list or hint is list:
        return "a list"
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if hint in names:
        return names[hint]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return f"one of {[m.value for m in hint]}"
    return "plain data"


def _plain(value, path: str, depth: int) -> Problem | None:
    """``Any`` inside a mapping: text, numbers, true/false, null, lists and mappings with text keys (JSON data)."""
    if depth > MAX_DEPTH:
        return Problem(path, f"nested at most {MAX_DEPTH} levels deep", "...")
    if value is None or isinstance(value, (str, bool, numbers.Real)):
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = _plain(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        return _check_mapping(value, Any, path, depth)
    return Problem(path, "text, a number, true/false, a list or a mapping", value)


def _check_mapping(value: dict, value_hint, path: str, depth: int) -> Problem | None:
    for key, item in value.items():
        if not isinstance(key, str):
            return Problem(f"{path}.{key}", "a mapping with text keys", key)
        problem = _check(value_hint, item, f"{path}.{key}", depth + 1)
        if problem:
            return problem
    return None


def _check(hint, value, path: str, depth: int) -> Problem | None:
    """Dispatch on the kind of annotation: each kind has its own check below."""
    if depth > MAX_DEPTH:
        return Problem(path, f"nested at most {MAX_DEPTH} levels deep", "...")
    if hint is Any:
        return _plain(value, path, depth)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _check_union(hint, args, value, path, depth)
    if hint is type(None):
        return None if value is None else Problem(path, "null", value)
    if origin is typing.Literal:
        return None if value in args else Problem(path, _describe(hint), value)
    if hint in (bool, int, float) or (isinstance(hint, type) and issubclass(hint, enum.Enum)):
        return _check_scalar(hint, value, path)
    if hint is str:
        return None if isinstance(value, str) else Problem(path, "text", value)
    if origin is list or hint is list:
        return _check_list(args[0] if args else Any, value, path, depth)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return Problem(path, "a mapping", value)
        return _check_mapping(value, args[1] if len(args) == 2 else Any, path, depth)
    if dataclasses.is_dataclass(hint):
        return _check_dataclass(hint, value, path, depth)
    return None  # an annotation this check does not model: the dataclass judges the value


def _check_union(hint, args, value, path: str, depth: int) -> Problem | None:
    """Fits when any member fits; otherwise the deepest story: a member that fits but for one inner value."""
    problems = [_check(a, value, path, depth) for a in args]
    if any(p is None for p in problems):
        return None
    deeper = [p for p in problems if p.path != path]  # a list or mapping that fits but for one inner value
    return deeper[0] if deeper else Problem(path, _describe(hint), value)


def _check_scalar(hint, value, path: str) -> Problem | None:
    """``bool``, ``int``, ``float`` or an enumeration."""
    if isinstance(value, str) or (isinstance(hint, type) and isinstance(value, hint) and not _bool_for(hint, value)):
        return None  # strings are converted and checked by argparse
    if hint is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return None
    if hint is int and isinstance(value, float) and value.is_integer():
        return None
    return Problem(path, _describe(hint), value)


def _check_list(item_hint, value, path: str, depth: int) -> Problem | None:
    if isinstance(value, str) and _check(item_hint, value, path, depth + 1) is None:
        return None  # one item given alone (`loss_type: ipo`, `lora_target_modules: all-linear`), as TRL accepts
    if not isinstance(value, list):
        return Problem(path, "a list", value)
    for i, item in enumerate(value):
        problem = _check(item_hint, item, f"{path}[{i}]", depth + 1)
        if problem:
            return problem
    return None


def _check_dataclass(hint, value, path: str, depth: int) -> Problem | None:
    """A nested dataclass given as a mapping of its fields (or as an instance)."""
    if not isinstance(value, dict):
        return None if isinstance(value, hint) else Problem(path, "a mapping", value)
    hints = field_hints([hint])
    for key, item in value.items():
        problem = _check(hints.get(key, Any), item, f"{path}.{key}", depth + 1)
        if problem:
            return problem
    return None


def _bool_for(hint, value) -> bool:
    """``True`` given for an int field (bool is an int subclass in Python, not in a configuration)."""
    return hint is int and isinstance(value, bool)
