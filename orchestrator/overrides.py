"""``key=value`` overrides on the command line, typed by the schema.

``apply_overrides`` sets dotted keys in a raw experiment before it is validated (``sweep.space.<key>=<spec>``
sets one search-space entry); ``section_with_overrides`` applies ``<section>.<key>=value`` to one section
that a command reads on its own (``moe-orch evaluate``'s ``evaluate.*``, ``serve``'s ``serve.*``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from orchestrator.contract import Family
from orchestrator.registry import get_family
from orchestrator.schema import check, check_section, field_types, load_yaml
from orchestrator.sections import GENERIC_SECTIONS


def family_of(name: Any) -> Family | None:
    """The registered family called ``name`` (None if there is none)."""
    try:
        return get_family(name) if isinstance(name, str) else None
    except KeyError:
        return None


def section_class(section: str, family: Family | None) -> type | None:
    """The dataclass of ``section`` (None if the family has no such section)."""
    if section in GENERIC_SECTIONS:
        return GENERIC_SECTIONS[section]
    return family.sections.get(section) if family is not None else None


def expected_type(dotted: str, family: Family | None) -> Any:
    """The type hint at ``section.field`` (None if the path does not exist)."""
    section, _, name = dotted.partition(".")
    if section in ("name", "family") and not name:
        return str
    cls = section_class(section, family)
    return field_types(cls).get(name) if cls is not None and name else None


def parse_override_value(text: str, tp: Any) -> Any:
    """Type the right-hand side of ``key=value`` by the schema: YAML scalars, kept as a string for str fields."""
    try:
        value = load_yaml(text) if text.strip() else ""
    except Exception:
        return text
    if tp is not None and not check(value, tp)[0] and check(text, tp)[0]:
        return text  # e.g. model.variant=123 on a str field, or a str|None field
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Set each ``dotted.key=value`` in ``raw`` (in place); return errors for malformed ones.

    ``sweep.space.<dotted key>=<spec>`` sets one search-space entry; ``sweep.space={}``
    clears the space. Unknown keys are left for the schema check to report.
    """
    errors = []
    family = family_of(raw.get("family"))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"{item}: got a malformed override, expected key=value (e.g. train.lr=3e-4)")
            continue
        parts = [part.strip() for part in key.split(".")]
        if not all(parts):
            errors.append(f"{item}: got an override key with an empty part, expected dotted names (e.g. train.lr=3e-4)")
            continue
        key = ".".join(parts)
        if key == "family":
            family = family_of(text.strip())
        if key.startswith("sweep.space."):
            try:
                spec = load_yaml(text)
            except Exception as exc:
                errors.append(f"{key}: got invalid YAML ({type(exc).__name__}), expected a distribution like "
                              "{choice: [1, 2]}")
                continue
            sweep = raw.get("sweep") if isinstance(raw.get("sweep"), dict) else {}
            raw["sweep"] = sweep
            if not isinstance(sweep.get("space"), dict):
                sweep["space"] = {}
            sweep["space"][key.removeprefix("sweep.space.")] = spec
            continue
        value = parse_override_value(text, expected_type(key, family))
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                errors.append(f"{key}: got an override below {'.'.join(parts[: i + 1])}, which is not a mapping")
                break
            node = child
        else:
            node[parts[-1]] = value
    return errors


def section_with_overrides(section: str, settings: Any,
                           overrides: list[str] | tuple[str, ...]) -> tuple[Any, list[str]]:
    """``settings`` (a section dataclass) with ``<section>.<key>=value`` overrides applied and checked;
    returns ``(settings, errors)`` (the unchanged settings when there are errors)."""
    cls = type(settings)
    types = field_types(cls)
    raw = dataclasses.asdict(settings)
    errors = []
    for item in overrides:
        key, sep, text = item.strip().partition("=")
        if not sep or not key.startswith(f"{section}."):
            errors.append(f"{item}: got a key outside {section}, expected {section}.<key>=value (the other "
                          "sections belong to an experiment YAML)")
            continue
        name = key.removeprefix(f"{section}.")
        raw[name] = parse_override_value(text, types.get(name))
    values, section_errors = check_section(section, raw, cls)
    updated = cls(**values)  # the well-typed values, so every problem is reported at once
    errors += section_errors + [f"{section}.{e}" for e in updated.errors()]
    return (settings, errors) if errors else (updated, [])
