"""Property-based fuzzing of experiment files and overrides (Hypothesis): whatever the file or the
``key=value`` says, ``moe-orch validate`` ends in exit 0, or exit 2 with the bad field named, never
in a traceback. The files start from the shipped experiments and are mutated key by key."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import examples

from orchestrator.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
BASES = {p.name: yaml.safe_load(p.read_text()) for p in sorted(EXPERIMENTS.glob("*.yaml"))}
FUZZ = settings(max_examples=examples(120))  # the rest from the profile (tests/conftest.py)
pytestmark = pytest.mark.property

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "null", "1e-3", "-1", "0", "nan", "inf", "ddp", "deepspeed", "more_c", "[1, 2]", "{a: 1}"]),
)
key_text = st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), min_size=1, max_size=8)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def _paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a nested dict (sections and leaves)."""
    out = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((*prefix, str(key)))
            out += _paths(value, (*prefix, str(key)))
    return out


@st.composite
def mutated_experiments(draw: st.DrawFn) -> tuple[str, dict[str, Any], list[str]]:
    """(base file name, mutated document, the dotted paths of the keys it touched)."""
    name = draw(st.sampled_from(sorted(BASES)))
    doc = copy.deepcopy(BASES[name])
    touched = []
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths)) if paths and draw(st.booleans()) else \
            (*draw(st.sampled_from(paths or [("model",)]))[:-1], draw(key_text))
        parent = doc
        for key in path[:-1]:
            if not isinstance(parent.get(key), dict):
                parent[key] = {}
            parent = parent[key]
        if draw(st.integers(0, 4)) == 0:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(values)
        touched.append(".".join(path))
    return name, doc, touched


def _validate(path: Path, *overrides: str) -> Any:
    result = CliRunner().invoke(main, ["validate", str(path), "--", *overrides])  # "--": an override may start with -
    assert result.exit_code in (0, 2), f"exit {result.exit_code}: {result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 2:
        assert result.exception is None or isinstance(result.exception, SystemExit)
    return result


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except yaml.representer.RepresenterError:
        return yaml.safe_dump(str(doc))


def _with(name: str, dotted: str, value: Any) -> tuple[str, dict[str, Any], list[str]]:
    """A pinned case: experiment ``name`` with the key at ``dotted`` set to ``value``."""
    doc = copy.deepcopy(BASES[name])
    *parents, leaf = dotted.split(".")
    parent = doc
    for key in parents:
        parent = parent[key]
    parent[leaf] = value
    return name, doc, [dotted]


@FUZZ
@given(mutated_experiments())
@example(case=_with("dylora.yaml", "data.phases", [{}]))  # KeyError in the family's checks, before the section's
def test_mutated_experiment_files_validate_or_name_the_field(tmp_path_factory: Any,
                                                             case: tuple[str, dict[str, Any], list[str]]) -> None:
    name, doc, touched = case
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_text(_dump(doc))
    result = _validate(path)
    if result.exit_code == 2:
        named = [path for path in touched if any(part in result.output for part in path.split("."))]
        whole_file = "expected an experiment YAML" in result.output or "expected a mapping" in result.output
        assert named or whole_file or "family" in result.output, (touched, result.output)


override_keys = st.one_of(
    st.sampled_from(sorted({".".join(p) for doc in BASES.values() for p in _paths(doc)})),
    st.text(max_size=15),
)
override_values = st.one_of(st.text(max_size=15), values.map(lambda v: yaml.safe_dump(v, default_flow_style=True)
                                                              .strip().removesuffix("...").strip()
                                                              if not (isinstance(v, float) and math.isnan(v))
                                                              else "nan"))


@FUZZ
@given(st.sampled_from(sorted(BASES)), st.lists(st.tuples(override_keys, override_values), min_size=1, max_size=3),
       st.booleans())
def test_fuzzed_overrides_validate_or_name_the_field(tmp_path_factory: Any, name: str,
                                                     pairs: list[tuple[str, str]], no_equals: bool) -> None:
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_text(yaml.safe_dump(BASES[name]))
    overrides = [key if no_equals and i == 0 else f"{key}={value}" for i, (key, value) in enumerate(pairs)]
    result = _validate(path, *overrides)
    if result.exit_code == 2:
        keys = [item.partition("=")[0] for item in overrides]
        leaves = [part.strip() for key in keys for part in key.split(".") if part.strip()]
        assert any(leaf in result.output for leaf in leaves) or "override" in result.output, (overrides, result.output)


@FUZZ
@given(st.text(max_size=200))
def test_any_text_as_an_experiment_file_is_an_error_not_a_crash(tmp_path_factory: Any, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "any.yaml"
    path.write_text(text)
    _validate(path)
