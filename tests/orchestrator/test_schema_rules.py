"""Declared field rules (``orchestrator.schema.setting``): what each rule accepts, the error lines it
gives, and that every section field of every registered family is declared and documented."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from orchestrator.contract import ServeSection
from orchestrator.registry import BUILTIN, get_family
from orchestrator.schema import Section, field_docs, override, rule_errors, setting
from orchestrator.sections import GENERIC_SECTIONS


@dataclass
class Knobs(Section):
    steps: int = setting(3, ge=1, doc="steps")
    ratio: float = setting(0.5, ge=0, lt=1, doc="a ratio")
    failures: int = setting(1, ge=0, special=(-1, "no limit"), doc="restarts")
    limit: int | None = setting(None, ge=1, doc="a cap")
    mode: str = setting("a", one_of=("a", "b"), doc="a mode")
    tasks: list[str] = setting(factory=lambda: ["x"], some_of=("x", "y"), doc="tasks")
    lengths: list[int] = setting(factory=lambda: [4], items={"ge": 1, "expect": "lengths >= 1"}, doc="lengths")
    ops: list[str] = setting(factory=lambda: ["+"], nonempty=True, items={"one_of": ("+", "-")},
                             expect="a non-empty list of +, -", doc="operators")
    prefix: str = setting("/", pattern=r"/.*", expect="a path starting with /", doc="a prefix")

    def cross_checks(self) -> list[str]:
        return [f"limit: got {self.limit}, expected <= steps ({self.steps})"] \
            if self.limit is not None and self.limit > self.steps else []


@pytest.mark.parametrize(("changes", "line"), [
    ({"steps": 0}, "steps: got 0, expected >= 1"),
    ({"ratio": 1.0}, "ratio: got 1.0, expected 0 <= x < 1"),
    ({"failures": -2}, "failures: got -2, expected -1 (no limit) or >= 0"),
    ({"limit": 0}, "limit: got 0, expected null or >= 1"),
    ({"mode": "c"}, "mode: got 'c', expected one of a, b"),
    ({"tasks": []}, "tasks: got [], expected some of x, y"),
    ({"tasks": ["x", "z"]}, "tasks: got 'z', expected some of x, y"),
    ({"lengths": [2, 0]}, "lengths: got 0, expected lengths >= 1"),
    ({"ops": ["*"]}, "ops: got ['*'], expected a non-empty list of +, -"),
    ({"ops": []}, "ops: got [], expected a non-empty list of +, -"),
    ({"prefix": "api"}, "prefix: got 'api', expected a path starting with /"),
])
def test_each_rule_names_the_field_the_value_and_what_it_accepts(changes, line) -> None:
    assert Knobs(**changes).errors() == [line]


def test_special_values_nulls_and_good_values_pass() -> None:
    assert Knobs().errors() == []
    assert Knobs(failures=-1, limit=None, ratio=0.0, lengths=[]).errors() == []


def test_every_problem_at_once_and_cross_checks_after_the_rules() -> None:
    errors = Knobs(steps=2, limit=5, mode="z", ratio=-1.0).errors()
    assert errors == ["ratio: got -1.0, expected 0 <= x < 1", "mode: got 'z', expected one of a, b",
                      "limit: got 5, expected <= steps (2)"]


def test_wrong_types_are_reported_instead_of_crashing_the_rules() -> None:
    errors = Knobs(steps="many", limit=5).errors()  # type: ignore[arg-type]
    assert errors == ["steps: got 'many', expected an integer"]


def test_validate_raises_with_every_line_and_from_dict_names_unknown_keys() -> None:
    with pytest.raises(ValueError, match="steps: got 0"):
        Knobs(steps=0).validate()
    with pytest.raises(ValueError, match="unknown Knobs keys: nope"):
        Knobs.from_dict({"nope": 1})


def test_override_changes_the_default_and_keeps_the_rule_and_doc() -> None:
    @dataclass
    class Small(ServeSection):
        max_batch_size: int = override(ServeSection, "max_batch_size", 4)

    assert Small().max_batch_size == 4
    assert Small(max_batch_size=0).errors() == ["max_batch_size: got 0, expected >= 1"]
    (doc,) = [d for d in field_docs(Small) if d.name == "max_batch_size"]
    assert doc.rule == ">= 1" and doc.default == "4" and doc.doc


def _all_sections() -> dict[str, type]:
    sections = dict(GENERIC_SECTIONS)
    for name in BUILTIN:  # the families that ship (tests register others at run time)
        sections.update({f"{name}.{kind}": cls for kind, cls in get_family(name).sections.items()})
    return sections


@pytest.mark.parametrize(("where", "cls"), list(_all_sections().items()))
def test_every_section_field_is_declared_with_a_doc_and_its_defaults_pass(where, cls) -> None:
    """The configuration reference (docs/configuration.md) is generated from these declarations."""
    assert issubclass(cls, Section), where
    missing = [f.name for f in dataclasses.fields(cls) if not f.metadata.get("doc")]
    assert missing == [], f"{where}: fields without setting(..., doc=...): {missing}"
    assert rule_errors(cls()) == [], where
    assert cls.__doc__, where
