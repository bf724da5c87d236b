"""Experiment files: loading and validation, every problem at once.

An experiment YAML has ``name``, ``family`` and sections. ``train``, ``scaling``, ``tracking``, ``storage`` and
``sweep`` are the same for every family (``orchestrator.sections``); ``model``, ``data`` and, where the family
has them, ``evaluate`` and ``serve`` are the family's own (``orchestrator.contract.Family``).
``load_experiment(path, overrides)`` returns a typed ``orchestrator.experiment.Experiment`` or raises
``ExperimentError`` whose ``errors`` lists every problem as ``path: got X, expected Y``. The experiment is
validated once, here, in the driver. Nothing here starts Ray.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from orchestrator.contract import STRATEGIES, Family
from orchestrator.experiment import FAMILY_SECTIONS, TOP_LEVEL, Experiment, ExperimentError
from orchestrator.overrides import apply_overrides, family_of
from orchestrator.registry import family_names, family_ref
from orchestrator.schema import check_section, fmt, load_yaml, rule_errors
from orchestrator.sections import GENERIC_SECTIONS, NAME_PATTERN
from orchestrator.space_check import SectionParts, check_space


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read an experiment YAML, apply ``key=value`` overrides and validate everything.

    Raises ``ExperimentError`` listing every problem (file, override and schema errors together).
    """
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except OSError as exc:
        message = f"{path}: got an unreadable file ({exc.strerror}), expected an experiment YAML"
        raise ExperimentError([message]) from exc
    except Exception as exc:  # yaml.YAMLError and friends
        raise ExperimentError([f"{path}: got invalid YAML ({exc}), expected an experiment YAML"]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ExperimentError([f"{path}: got {fmt(raw)}, expected a mapping of {', '.join(TOP_LEVEL)}"])
    errors = apply_overrides(raw, overrides)
    experiment, more = validate(raw, source=str(path))
    errors += more
    if errors:
        raise ExperimentError(errors)
    assert experiment is not None
    return experiment


def validate(raw: dict[str, Any], source: str | None = None) -> tuple[Experiment | None, list[str]]:
    """Check every part of a raw experiment; returns ``(experiment or None, errors)``."""
    errors: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            errors.append(f"{key}: got an unknown key, expected one of {', '.join(TOP_LEVEL)}")

    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        errors.append(f"name: got {fmt(name)}, expected a string of letters, digits, '_', '-', '.'")
    family = family_of(raw.get("family"))
    if family is None:
        errors.append(f"family: got {fmt(raw.get('family'))}, expected one of {', '.join(family_names())}")

    sections: dict[str, Any] = {}
    for section, cls in GENERIC_SECTIONS.items():
        sections[section] = _section(section, raw.get(section), cls, errors)
    if family is not None:
        for section in FAMILY_SECTIONS:
            cls = family.sections.get(section)
            if cls is not None:
                sections[section] = _section(section, raw.get(section), cls, errors)
            elif raw.get(section) is not None:
                what = "evaluator" if section == "evaluate" else "serve app"
                errors.append(f"{section}: got a section, expected none (family {family.name} has no {what})")
        errors += _family_errors(family, sections)

    if errors or family is None:
        return None, errors
    data = sections["data"]
    if data.root is not None:  # a path the user gave: absolute, the same on every node
        data.root = str(Path(data.root).expanduser().absolute())
    # null stays null: each process that reads data resolves it where it runs ($MOE_ORCH_DATA of that node;
    # a local Ray's processes inherit the driver's, see ray_runtime.start_local_ray)
    return Experiment(name=name, family=family.name, source=source, family_ref=family_ref(family.name), **sections), []


def _section(section: str, raw: Any, cls: type, errors: list[str]) -> Any:
    """The section dataclass from ``raw`` (badly typed fields dropped, so they keep their defaults);
    its type errors, its fields' rules and its cross checks appended. The cross checks relate fields to
    each other, so they run only once every field of the section is well typed."""
    values, errs = check_section(section, raw, cls)
    errors += errs
    obj = cls(**values)
    problems = rule_errors(obj) + (obj.cross_checks() if not errs else [])
    errors += [f"{section}.{e}" for e in problems]
    return obj


def _device_errors(family: Family, sections: dict[str, Any]) -> list[str]:
    """CUDA asked of a family that runs on CPU only (``Family.devices``): ``evaluate.device: cuda`` or
    ``serve.num_gpus_per_replica`` > 0. Whether this machine has a GPU is not checked here: the experiment may
    run on a cluster; ``orchestrator.devices`` checks where the work runs."""
    if family.runs_on_cuda:
        return []
    errors = []
    evaluate, served = sections.get("evaluate"), sections.get("serve")
    if evaluate is not None and evaluate.device == "cuda":
        errors.append(f"evaluate.device: got 'cuda', expected auto or cpu (family {family.name} evaluates on cpu "
                      "only)")
    if served is not None and served.num_gpus_per_replica > 0:  # badly typed fields keep their defaults
        errors.append(f"serve.num_gpus_per_replica: got {fmt(served.num_gpus_per_replica)}, expected 0 (family "
                      f"{family.name} serves on cpu only)")
    return errors


def _family_errors(family: Family, sections: dict[str, Any]) -> list[str]:
    """What the family must support: the strategy, the sweep metrics, and its cross-section checks."""
    errors = []
    scaling, sweep = sections["scaling"], sections["sweep"]
    if scaling.strategy in STRATEGIES and scaling.strategy not in family.strategies:
        errors.append(f"scaling.strategy: got {fmt(scaling.strategy)}, expected one of "
                      f"{', '.join(family.strategies)} (what family {family.name} supports)")
    metrics = sweep.metrics
    for m in metrics:
        if not family.reports(m):
            known = ", ".join([*family.metrics, *family.eval_metrics])
            known += "".join(f" or {p}..." for p in (*family.metric_prefixes, *family.eval_metric_prefixes))
            errors.append(f"sweep.metric: got {fmt(m)}, expected one of {known}")
        elif family.is_eval_metric(m):
            # reported once, at the end of a trial: it needs evaluate.at_end, no ASHA, and Optuna's
            # multi-objective mode (TPE reads its single metric at every report)
            evaluate = sections.get("evaluate")
            if evaluate is None or not evaluate.at_end:
                errors.append(f"sweep.metric: got {m!r}, an evaluation metric, expected evaluate.at_end: true")
            elif sweep.scheduler != "none":
                errors.append(f"sweep.scheduler: got {sweep.scheduler!r} with evaluation metric {m!r}, "
                              "expected none")
            elif len(metrics) == 1 and sweep.search == "optuna":
                errors.append(f"sweep.metric: got {m!r} alone with search optuna, expected it in a list of "
                              "metrics (NSGA-II) or search: random")
    errors += check_space(sweep, family, sections)
    errors += _device_errors(family, sections)
    # the family's checks relate its sections to each other: they run once each section is valid on its own
    if family.checks is not None and not any(section.errors() for section in sections.values()):
        errors += family.checks(SectionParts(sections))
    return errors
