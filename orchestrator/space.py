"""Search-space specs (``sweep.space``): parsing, checking, and conversion to Ray Tune.

Each key of ``sweep.space`` is a dotted config path (``model.top_k``, ``train.lr``) and
each value one distribution:

- ``{choice: [a, b, ...]}``: categorical, the searcher picks;
- ``{grid: [a, b, ...]}``: every value is run at least once. With ``search: optuna`` the
  grid points (the product over all grid keys) are enqueued as the first trials (other
  keys drawn at random, seeded) and the key stays categorical for later trials, so
  ``num_samples`` must be at least the number of grid points; with ``search: random``
  it is Tune's ``grid_search`` (each grid point repeated ``num_samples`` times);
- ``{uniform: [lo, hi]}`` / ``{loguniform: [lo, hi]}``: floats in [lo, hi]
  (``loguniform`` needs lo > 0);
- ``{randint: [lo, hi]}``: integers lo..hi, both ends included.

This module knows nothing about the experiment schema: callers pass a ``check`` function
that says whether a value fits the key's field type.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from orchestrator.schema import fmt

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
DISCRETE = ("choice", "grid", "randint")
MAX_RANDINT_ENUMERATION = 64  # randint ranges wider than this are not enumerated for combination checks


@dataclass(frozen=True)
class Dim:
    """One swept key: ``kind`` is one of KINDS, ``args`` its values or [lo, hi]."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def values(self) -> list[Any] | None:
        """Every value this dim can take, or None for a continuous / very wide range."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind == "randint" and self.args[1] - self.args[0] < MAX_RANDINT_ENUMERATION:
            return list(range(self.args[0], self.args[1] + 1))
        return None

    def probes(self) -> list[Any]:
        """Values worth checking against the schema: all discrete values, else both ends."""
        return self.values() or list(self.args)

    def sample(self, rng: random.Random) -> Any:
        """One random value (used to complete enqueued grid points)."""
        if self.kind in ("choice", "grid"):
            return rng.choice(self.args)
        if self.kind == "randint":
            return rng.randint(*self.args)
        lo, hi = self.args
        if self.kind == "loguniform":
            import math

            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return rng.uniform(lo, hi)

    def to_tune(self, search: str) -> Any:
        """The Ray Tune domain for this dim (``search`` is ``optuna`` or ``random``)."""
        from ray import tune

        if self.kind == "grid" and search == "random":
            return tune.grid_search(list(self.args))
        if self.kind in ("choice", "grid"):
            return tune.choice(list(self.args))
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        return tune.randint(self.args[0], self.args[1] + 1)  # tune's upper bound is exclusive


def parse_dim(key: str, spec: Any) -> tuple[Dim | None, list[str]]:
    """Parse one ``sweep.space`` entry; returns the dim (None if unusable) and error lines."""
    path = f"sweep.space.{key}"
    expected = "a mapping with one of " + ", ".join(KINDS)
    if not isinstance(spec, dict) or len(spec) != 1:
        return None, [f"{path}: got {fmt(spec) if not isinstance(spec, dict) else sorted(spec)}, expected {expected}"]
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        return None, [f"{path}: got distribution {kind!r}, expected one of {', '.join(KINDS)}"]
    if not isinstance(args, list) or not args:
        return None, [f"{path}.{kind}: got {fmt(args)}, expected a non-empty list"]
    if kind in ("choice", "grid"):
        return Dim(key, kind, tuple(args)), []
    number = (int,) if kind == "randint" else (int, float)
    ok = len(args) == 2 and all(isinstance(a, number) and not isinstance(a, bool) for a in args)
    what = "integers" if kind == "randint" else "numbers"
    if not ok:
        return None, [f"{path}.{kind}: got {fmt(args)}, expected [lo, hi], two {what}"]
    lo, hi = args
    if not lo < hi if kind != "randint" else not lo <= hi:
        return None, [f"{path}.{kind}: got {fmt(args)}, expected lo < hi"]
    if kind == "loguniform" and lo <= 0:
        return None, [f"{path}.{kind}: got {fmt(args)}, expected lo > 0"]
    if kind != "randint":
        args = [float(lo), float(hi)]
    return Dim(key, kind, tuple(args)), []


def check_dim_values(dim: Dim, fits: Callable[[Any], str | None]) -> list[str]:
    """Check each probe value with ``fits`` (returns an expectation string when it does not fit)."""
    errors = []
    for value in dim.probes():
        expected = fits(value)
        if expected is not None:
            errors.append(f"sweep.space.{dim.key}: got {fmt(value)}, expected {expected}")
    return errors


def combinations(dims: list[Dim], limit: int = 5000) -> Iterator[dict[str, Any]]:
    """Every combination of the discrete dims' values (continuous dims at both ends).

    Stops after ``limit`` combinations so a huge space cannot stall validation.
    """
    axes = [(d.key, d.probes()) for d in dims]
    for i, values in enumerate(itertools.product(*(v for _, v in axes))):
        if i >= limit:
            return
        yield {key: value for (key, _), value in zip(axes, values, strict=True)}


def grid_points(dims: list[Dim], seed: int | None) -> list[dict[str, Any]]:
    """Points to enqueue so every grid value is run (other dims drawn at random, seeded)."""
    grid = [d for d in dims if d.kind == "grid"]
    if not grid:
        return []
    rng = random.Random(seed)
    points = []
    for values in itertools.product(*(d.args for d in grid)):
        fixed = {d.key: v for d, v in zip(grid, values, strict=True)}
        points.append({d.key: fixed[d.key] if d.key in fixed else d.sample(rng) for d in dims})
    return points


def num_grid_points(dims: list[Dim]) -> int:
    """How many points the grid dims span (1 with no grid dims)."""
    n = 1
    for d in dims:
        if d.kind == "grid":
            n *= len(d.args)
    return n


def to_tune_space(dims: list[Dim], search: str) -> dict[str, Any]:
    """The flat Tune ``param_space``: ``{dotted key: domain}``."""
    return {d.key: d.to_tune(search) for d in dims}


def describe_space(dims: list[Dim]) -> dict[str, dict[str, list[Any]]]:
    """The space as plain data (for printing and for MLflow)."""
    return {d.key: {d.kind: list(d.args)} for d in dims}
