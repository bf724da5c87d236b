"""Type checking of plain config data against dataclass type hints.

The experiment schema is a set of dataclasses (see ``orchestrator.config``); this module
checks raw YAML values against their field types and reports problems as
``path: got X, expected Y`` lines, never raising. It also owns the YAML loader, which
reads ``3e-4`` as a float (plain PyYAML reads it as a string).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, get_args, get_origin

import yaml

_MISSING = object()


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (``3e-4``, ``1E5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with the exponent-aware safe loader."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def dump_yaml(data: Any) -> str:
    """Dump plain data as block-style YAML, keys in insertion order."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type hint}`` of a dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def describe(tp: Any) -> str:
    """A short human name for a type hint: ``an integer``, ``a number or null``..."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is list:
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return {
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        str: "a string",
        type(None): "null",
        Any: "any value",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def check(value: Any, tp: Any) -> tuple[bool, Any]:
    """``(ok, coerced)``: whether ``value`` fits the type hint ``tp``; ints become floats for float fields."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            ok, coerced = check(value, arm)
            if ok:
                return True, coerced
        return False, value
    if origin is Literal:
        return value in args, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is list or tp is list:
        if not isinstance(value, list):
            return False, value
        if not args:
            return True, value
        out = []
        for item in value:
            ok, coerced = check(item, args[0])
            if not ok:
                return False, value
            out.append(coerced)
        return True, out
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    raise TypeError(f"unsupported type hint in schema: {tp!r}")


def fmt(value: Any) -> str:
    """How a bad value is shown in an error line."""
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def check_section(path: str, raw: Any, cls: type) -> tuple[dict[str, Any], list[str]]:
    """Check the mapping ``raw`` against dataclass ``cls``.

    Returns the coerced values of the fields present (unknown or bad ones dropped) and
    one error line per problem, each prefixed by ``path``.
    """
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, [f"{path}: got {fmt(raw)}, expected a mapping"]
    fields = field_types(cls)
    values: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in raw.items():
        if key not in fields:
            errors.append(f"{path}.{key}: got an unknown key, expected one of {', '.join(fields)}")
            continue
        ok, coerced = check(value, fields[key])
        if ok:
            values[key] = coerced
        else:
            errors.append(f"{path}.{key}: got {fmt(value)}, expected {describe(fields[key])}")
    return values, errors
