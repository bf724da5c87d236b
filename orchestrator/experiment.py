"""The validated experiment: typed sections, the family's own for model, data, evaluate and serve.

``orchestrator.config.load_experiment`` builds it (or raises ``ExperimentError`` listing every problem);
a sweep trial applies its sampled values with ``Experiment.with_values``, and Ray Train workers receive
it as it is. Plain data: nothing here starts Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from orchestrator import space as space_mod
from orchestrator.contract import DataSection, EvaluateSection, Family, ServeSection
from orchestrator.registry import get_family, load_family
from orchestrator.schema import dump_yaml
from orchestrator.sections import (
    GENERIC_SECTIONS,
    ScalingSection,
    StorageSection,
    SweepSection,
    TrackingSection,
    TrainSection,
)

FAMILY_SECTIONS = ("model", "data", "evaluate", "serve")
TOP_LEVEL = ("name", "family", "model", "data", *GENERIC_SECTIONS, "evaluate", "serve")


class ExperimentError(ValueError):
    """An invalid experiment; ``errors`` holds one ``path: got X, expected Y`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid experiment:\n  " + "\n  ".join(errors))
        self.errors = errors


@dataclass
class Experiment:
    """A validated experiment: typed sections, the family's own for model/data/evaluate/serve."""

    name: str
    family: str
    model: Any  # the family's model config dataclass
    data: DataSection  # the family's DataSection subclass; ``root`` absolute
    train: TrainSection
    scaling: ScalingSection
    tracking: TrackingSection
    storage: StorageSection
    sweep: SweepSection
    evaluate: EvaluateSection | None = None  # None: the family has no evaluator
    serve: ServeSection | None = None  # None: the family has no serve app
    source: str | None = None  # the YAML file it came from
    family_ref: str = ""  # "module:FAMILY": how processes that did not register the family (Tune trial
    # actors, Ray Train workers) import its declaration

    @property
    def family_spec(self) -> Family:
        return load_family(self.family_ref) if self.family_ref else get_family(self.family)

    @property
    def metrics(self) -> list[str]:
        """``sweep.metric`` as a list."""
        return self.sweep.metrics

    @property
    def modes(self) -> list[str]:
        """``sweep.mode`` as a list, one per metric."""
        return self.sweep.modes

    @property
    def dims(self) -> list[space_mod.Dim]:
        """The parsed ``sweep.space``."""
        return [space_mod.parse_dim(k, v)[0] for k, v in self.sweep.space.items()]

    @property
    def evaluates_at_end(self) -> bool:
        return self.evaluate is not None and self.evaluate.at_end

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment as plain nested data (YAML, MLflow params)."""
        out: dict[str, Any] = {"name": self.name, "family": self.family, "model": self.model.to_dict()}
        for section in ("data", *GENERIC_SECTIONS, "evaluate", "serve"):
            value = getattr(self, section)
            if value is not None:
                out[section] = dataclasses.asdict(value)
        return out

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def with_values(self, values: dict[str, Any]) -> Experiment:
        """A copy with dotted-path values set (a trial's sampled config). Not re-validated: the
        driver checked every value of the search space, alone and in combination."""
        changes: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            section, _, name = key.partition(".")
            changes.setdefault(section, {})[name] = value
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **fields)
                                            for section, fields in changes.items()})
