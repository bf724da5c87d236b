"""The base every family's model config dataclass shares: plain data with checks.

A family config is a ``@dataclass`` subclass of ``FamilyConfig`` that implements
``errors()`` (one ``field: got X, expected Y`` line per problem); this base gives it
``validate``, ``to_dict`` and ``from_dict``, which the orchestrator's schema relies on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self


class FamilyConfig:
    """Mixin for family config dataclasses (see the module docstring)."""

    def errors(self) -> list[str]:
        """Every problem with this config, one ``field: got X, expected Y`` line each."""
        raise NotImplementedError

    def validate(self) -> Self:
        """Raise ValueError listing every error; return self when valid."""
        errs = self.errors()
        if errs:
            raise ValueError(f"invalid {type(self).__name__}:\n  " + "\n  ".join(errs))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The config as plain nested data (YAML, JSON, Ray and MLflow params)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**data)


def base_reference_errors(base: Any) -> list[str]:
    """The ``base:`` check every family on a pretrained causal LM shares (``trainables.lm.load_base`` names)."""
    if not isinstance(base, str) or not base:
        return [f"base: got {base!r}, expected smollm2-135m-instruct, tiny-llama, a hub name or a dir"]
    return []
