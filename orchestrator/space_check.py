"""Checking ``sweep.space`` against the family's sections: every key a sweepable field, every value fitting
it, alone and in every combination (the sections' own checks, e.g. ``top_k <= num_experts``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from orchestrator import space as space_mod
from orchestrator.contract import Family
from orchestrator.overrides import expected_type, section_class
from orchestrator.schema import check, describe, field_types, fmt
from orchestrator.sections import SWEEPABLE_SECTIONS, SweepSection


class SectionParts:
    """Attribute access to the sections being validated (what ``Family.checks`` receives)."""

    def __init__(self, sections: dict[str, Any]) -> None:
        self.__dict__.update(sections)
        self.evaluate = sections.get("evaluate")
        self.serve = sections.get("serve")


def check_space(sweep: SweepSection, family: Family, sections: dict[str, Any]) -> list[str]:
    """Each key must name a model/data/train field; each value must fit it, alone and in combination."""
    errors: list[str] = []
    dims: list[space_mod.Dim] = []
    for key, spec in sweep.space.items():
        section = str(key).partition(".")[0]
        tp = expected_type(str(key), family)
        if section not in SWEEPABLE_SECTIONS or tp is None:
            fields = [f"{s}.{f}" for s in SWEEPABLE_SECTIONS for f in field_types(section_class(s, family))]
            errors.append(f"sweep.space.{key}: got an unknown key, expected a field of "
                          f"{', '.join(SWEEPABLE_SECTIONS)} (e.g. {', '.join(fields[:4])}, ...)")
            continue
        dim, errs = space_mod.parse_dim(key, spec)
        errors += errs
        if dim is None:
            continue
        if dim.kind in ("uniform", "loguniform") and not check(0.5, tp)[0]:
            errors.append(f"sweep.space.{key}: got {dim.kind}, expected choice/grid/randint for {describe(tp)}")
            continue
        if dim.kind == "randint" and not check(1, tp)[0]:
            errors.append(f"sweep.space.{key}: got randint, expected choice/grid/uniform for {describe(tp)}")
            continue
        bad = space_mod.check_dim_values(dim, lambda v, tp=tp: None if check(v, tp)[0] else describe(tp))
        errors += bad
        if not bad:
            dims.append(dim)

    # Each value alone, then every combination: the sections' own checks (e.g. top_k <= num_experts).
    # Errors the base config already has are reported once, elsewhere.
    base = set(_trial_errors({}, family, sections))
    new_errors = lambda values: [e for e in _trial_errors(values, family, sections) if e not in base]
    single_fail: set[tuple[str, Any]] = set()
    for dim in dims:
        for value in dim.probes():
            for err in new_errors({dim.key: value}):
                single_fail.add((dim.key, repr(value)))
                errors.append(f"sweep.space.{dim.key}: got {fmt(value)}, which makes {err}")
    if len(dims) > 1:
        seen: set[str] = set()
        for combo in space_mod.combinations(dims):
            if any((k, repr(v)) in single_fail for k, v in combo.items()):
                continue
            for err in new_errors(combo):
                # keep only the keys needed to reproduce the error
                needed = dict(combo)
                for k in list(combo):
                    trial = {kk: vv for kk, vv in needed.items() if kk != k}
                    if err in new_errors(trial):
                        needed = trial
                where = ", ".join(f"{k}={fmt(v)}" for k, v in needed.items())
                if where in seen:
                    continue
                seen.add(where)
                errors.append(f"sweep.space: got the combination {where}, which makes {err}")
    n_grid = space_mod.num_grid_points(dims)
    if sweep.search == "optuna" and n_grid > 1 and n_grid > sweep.num_samples:
        errors.append(f"sweep.num_samples: got {sweep.num_samples}, expected >= {n_grid} (the grid points)")
    return errors


def _trial_errors(values: dict[str, Any], family: Family, sections: dict[str, Any]) -> list[str]:
    """The model/data/train errors (and the family's cross checks) with dotted ``values`` substituted."""
    patched = dict(sections)
    changes: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        changes.setdefault(section, {})[name] = value
    for section, fields in changes.items():
        patched[section] = dataclasses.replace(sections[section], **fields)
    errors = [f"{s}.{e}" for s in SWEEPABLE_SECTIONS for e in patched[s].errors()]
    if family.checks is not None and not errors:  # they relate sections to each other, each one valid
        errors += family.checks(SectionParts(patched))
    return errors
