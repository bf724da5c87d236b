"""Checking plain config data against section dataclasses: types, declared rules, the ``Section`` base.

The experiment schema is a set of ``Section`` dataclasses (``orchestrator.sections`` and each family's
own). This module checks raw YAML values against their field types, checks the rules each field declares
with ``setting(default, ge=..., one_of=..., doc=...)``, and reports problems as ``path: got X,
expected Y`` lines, never raising. It also owns the YAML loader, which reads ``3e-4`` as a float
(plain PyYAML reads it as a string), and ``field_docs``, the source of the configuration reference.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from typing import Any, Literal, Self, get_args, get_origin

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


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type hint}`` of a dataclass, in declaration order (don't mutate it)."""
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


# -- declared constraints ----------------------------------------------------------------------
#
# A section field declares what it accepts beside its type: ``setting(200, ge=1, doc="optimizer steps")``.
# ``rule_errors(obj)`` checks every declared rule of a dataclass instance; ``field_docs(cls)`` lists the
# fields for the configuration reference (docs/configuration.md is generated from it).


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one field accepts beyond its type hint; ``text`` is the ``expected ...`` part of an error.

    ``ge``/``gt``/``le``/``lt``: a range; ``one_of``: allowed values; ``some_of``: a list field whose
    items are each one of these (and at least one); ``nonempty``: a non-blank string or non-empty list;
    ``pattern``: a regular expression the whole string matches; ``special``: ``(value, meaning)``, one
    more value allowed outside the range (``(-1, "no limit")``); ``items``: a rule every item of a list
    field passes (each bad item is its own error line); ``expect``: the text to show instead of
    the generated one. A null value passes when the field's type admits null.
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    one_of: tuple[Any, ...] = ()
    some_of: tuple[Any, ...] = ()
    nonempty: bool = False
    pattern: str | None = None
    special: tuple[Any, str] | None = None
    items: Rule | None = None
    expect: str | None = None

    @property
    def text(self) -> str:
        """What the field accepts, in words: ``>= 1``, ``0 <= x < 1``, ``one of a, b``..."""
        if self.expect is not None:
            return self.expect
        if self.one_of:
            return "one of " + ", ".join(str(v) for v in self.one_of)
        if self.some_of:
            return "some of " + ", ".join(str(v) for v in self.some_of)
        low = ("<=", self.ge) if self.ge is not None else ("<", self.gt) if self.gt is not None else None
        high = ("<=", self.le) if self.le is not None else ("<", self.lt) if self.lt is not None else None
        if low and high:
            text = f"{_num(low[1])} {low[0]} x {high[0]} {_num(high[1])}"
        elif low:
            text = f"{low[0].replace('<', '>')} {_num(low[1])}"
        elif high:
            text = f"{high[0]} {_num(high[1])}"
        elif self.nonempty:
            text = "a non-empty value"
        elif self.items is not None:
            text = f"items {self.items.text}"
        else:
            text = ""
        if self.special is not None:
            text = f"{fmt(self.special[0])} ({self.special[1]}) or {text}"
        return text

    def accepts(self, value: Any) -> bool:
        """Whether a (well-typed, non-null) value passes."""
        if self.special is not None and value == self.special[0] and type(value) is type(self.special[0]):
            return True
        if self.one_of and value not in self.one_of:
            return False
        if self.some_of and (not value or any(v not in self.some_of for v in value)):
            return False
        if self.nonempty and (not value or (isinstance(value, str) and not value.strip())):
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, str(value)):
            return False
        try:
            return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                    and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))
        except TypeError:
            return False

    def problems(self, name: str, value: Any, nullable: bool) -> list[str]:
        """The error lines for ``value`` at field ``name`` (none when it passes)."""
        if value is None and nullable:
            return []
        prefix = "null or " if nullable else ""
        if self.some_of and isinstance(value, list) and value:  # name each bad item
            return [f"{name}: got {fmt(v)}, expected {prefix}{self.text}" for v in value if v not in self.some_of]
        if not self.accepts(value):
            return [f"{name}: got {fmt(value) if value != [] else '[]'}, expected {prefix}{self.text}"]
        if self.items is not None and isinstance(value, list):
            bad = [v for v in value if not self.items.accepts(v)]
            if bad and self.expect is not None:  # the field says what a whole list must be
                return [f"{name}: got {fmt(value)}, expected {prefix}{self.expect}"]
            return [f"{name}: got {fmt(v)}, expected {self.items.text}" for v in bad]
        return []


def setting(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, doc: str = "",
            **rule: Any) -> Any:
    """A section field with its default, its one-line ``doc`` and its declared ``Rule`` (keyword arguments
    of ``Rule``; ``items`` may be a dict of them): ``max_steps: int = setting(200, ge=1, doc="optimizer steps")``."""
    if isinstance(rule.get("items"), dict):
        rule["items"] = Rule(**rule["items"])
    metadata = {"doc": doc, "rule": Rule(**rule) if rule else None}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def override(base: type, name: str, default: Any) -> Any:
    """A subclass's new default for an inherited field, keeping the base's rule and doc:
    ``max_batch_size: int = override(ServeSection, "max_batch_size", 16)``."""
    inherited = {f.name: f for f in dataclasses.fields(base)}[name]
    return dataclasses.field(default=default, metadata=inherited.metadata)


def _nullable(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def type_errors(obj: Any) -> list[str]:
    """``field: got X, expected <type>`` for each field of a dataclass instance that does not fit its hint."""
    return [f"{name}: got {fmt(getattr(obj, name))}, expected {describe(tp)}"
            for name, tp in field_types(type(obj)).items() if not check(getattr(obj, name), tp)[0]]


def rule_errors(obj: Any) -> list[str]:
    """Every declared rule of a dataclass instance checked: one ``field: got X, expected Y`` line per problem."""
    hints = field_types(type(obj))
    errors: list[str] = []
    for f in dataclasses.fields(obj):
        rule = f.metadata.get("rule")
        if rule is not None:
            errors += rule.problems(f.name, getattr(obj, f.name), _nullable(hints[f.name]))
    return errors


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    """One row of the configuration reference."""

    name: str
    type: str  # describe() of the hint: "an integer", "a number or null"
    default: str  # as YAML would show it
    rule: str  # what it accepts beyond its type ("" = anything of the type)
    doc: str


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def field_docs(cls: type) -> list[FieldDoc]:
    """The fields of a section dataclass, for the configuration reference (in declaration order)."""
    hints = field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        rule = f.metadata.get("rule")
        text = rule.text if rule is not None else ""
        if rule is not None and _nullable(hints[f.name]):
            text = f"null or {text}"
        out.append(FieldDoc(f.name, describe(hints[f.name]), _default_text(f), text, f.metadata.get("doc", "")))
    return out


@dataclasses.dataclass
class Section:
    """The base of every config section, generic or a family's: a dataclass that checks itself.

    Fields declare what they accept with ``setting(...)``; a subclass overrides ``cross_checks`` only for
    relations between fields (``top_k <= num_experts``). ``errors()`` lists every problem at once.
    """

    def cross_checks(self) -> list[str]:
        """Problems that involve several fields, one ``field: got X, expected Y`` line each (no prefix).
        Runs only when every field is well typed."""
        return []

    def errors(self) -> list[str]:
        """Every problem: wrong types, else broken field rules plus the cross checks (no section prefix)."""
        return type_errors(self) or rule_errors(self) + self.cross_checks()

    def validate(self) -> Self:
        """Raise ValueError listing every error; return self when valid."""
        errs = self.errors()
        if errs:
            raise ValueError(f"invalid {type(self).__name__}:\n  " + "\n  ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The section as plain nested data (YAML, JSON, Ray and MLflow params)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict; unknown keys raise ValueError naming them."""
        unknown = sorted(set(data) - set(field_types(cls)))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**data)
