"""Experiment files: schema, loading, ``key=value`` overrides and validation (all errors at once).

An experiment YAML has ``name``, ``family`` and sections. ``train``, ``scaling``,
``tracking``, ``storage`` and ``sweep`` are the same for every family (below); ``model``, ``data`` and,
where the family has them, ``evaluate`` and ``serve`` are the family's own dataclasses
(``orchestrator.contract.Family``). ``load_experiment(path, overrides)`` returns a typed
``Experiment`` or raises ``ExperimentError`` whose ``errors`` lists every problem as
``path: got X, expected Y``. The experiment is validated once, here, in the driver: a sweep
trial applies its sampled values with ``Experiment.with_values`` (``dataclasses.replace``),
and Ray Train workers receive the typed ``Experiment``. Nothing here starts Ray.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator import space as space_mod
from orchestrator.contract import STRATEGIES, DataSection, EvaluateSection, Family, Section, ServeSection
from orchestrator.registry import family_names, family_ref, get_family, load_family
from orchestrator.schema import check, check_section, describe, dump_yaml, field_types, fmt, load_yaml

SWEEPABLE_SECTIONS = ("model", "data", "train")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class TrainSection(Section):
    """Optimisation: AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    max_steps: int = 200  # optimizer steps
    batch_size: int = 16  # per worker and micro-batch
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0  # null = no clipping
    eval_every: int = 25  # steps between eval + report + checkpoint
    eval_batches: int = 4
    seed: int = 0
    keep_checkpoints: int = 2  # newest checkpoints kept by Ray Train
    max_failures: int = 1  # worker-group restarts from the latest checkpoint after a failure; -1 = no limit

    def errors(self) -> list[str]:
        errors = []
        for key in ("max_steps", "batch_size", "grad_accum_steps", "eval_every", "eval_batches", "keep_checkpoints"):
            errors += _at_least(key, getattr(self, key), 1)
        errors += _at_least("warmup_steps", self.warmup_steps, 0)
        if self.max_failures < -1:
            errors.append(f"max_failures: got {fmt(self.max_failures)}, expected -1 (no limit) or >= 0")
        errors += _at_least("weight_decay", self.weight_decay, 0)
        if not self.lr > 0:
            errors.append(f"lr: got {fmt(self.lr)}, expected > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            errors.append(f"min_lr_ratio: got {fmt(self.min_lr_ratio)}, expected 0 <= x <= 1")
        if self.grad_clip is not None and not self.grad_clip > 0:
            errors.append(f"grad_clip: got {fmt(self.grad_clip)}, expected null or > 0")
        return errors


@dataclass
class ScalingSection(Section):
    """Ray Train scaling: worker count, devices and the distributed strategy."""

    num_workers: int = 1
    use_gpu: bool = False
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3 (deepspeed only)
    cpus_per_worker: float = 1.0

    def errors(self) -> list[str]:
        errors = _at_least("num_workers", self.num_workers, 1)
        if not self.cpus_per_worker > 0:
            errors.append(f"cpus_per_worker: got {fmt(self.cpus_per_worker)}, expected > 0")
        if self.zero_stage not in (0, 1, 2, 3):
            errors.append(f"zero_stage: got {fmt(self.zero_stage)}, expected one of 0, 1, 2, 3")
        elif self.zero_stage and self.strategy != "deepspeed":
            errors.append(f"zero_stage: got {self.zero_stage}, expected 0 unless scaling.strategy is deepspeed")
        return errors


@dataclass
class TrackingSection(Section):
    """MLflow: tracking URI and experiment name.

    ``uri``: null = MLflow's convention, ``$MLFLOW_TRACKING_URI`` if set, else
    ``sqlite:///mlflow.db`` (a relative sqlite path is made absolute in the driver).
    """

    uri: str | None = None
    experiment: str | None = None  # None = the experiment's name
    # checkpoints a family marks for the registry (``registry/*`` report keys, e.g. each continual-learning
    # phase) become versions of this MLflow registered model, alias ``current`` on the newest; a sweep
    # trial registers under ``<name>-<trial>``. null = register nothing.
    registered_model: str | None = None

    def errors(self) -> list[str]:
        errors = []
        if self.uri is not None and not self.uri.strip():
            errors.append(f"uri: got {fmt(self.uri)}, expected null or a URI like sqlite:///mlflow.db")
        if self.registered_model is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*",
                                                                   str(self.registered_model)):
            errors.append(f"registered_model: got {fmt(self.registered_model)}, expected null or a name of "
                          "letters, digits, '_', '.', '-'")
        return errors


@dataclass
class StorageSection(Section):
    """Where checkpoints, Tune's trial state and ``--resume`` state live (``orchestrator/storage.py``).

    ``path``: null = ``$MOE_ORCH_STORAGE`` if set, else ``./ray_results`` (made absolute in the driver);
    a folder, a shared mount every node sees, or ``s3://bucket/prefix`` / ``gs://bucket/prefix``
    (an S3-compatible server: ``?endpoint_override=http://host:port``). Credentials come from the
    environment, never from here.
    """

    path: str | None = None

    def errors(self) -> list[str]:
        from orchestrator.storage import uri_errors

        return [f"path: {e}" for e in uri_errors(self.path)] if self.path is not None else []


@dataclass
class SweepSection(Section):
    """Ray Tune + Optuna: objective(s), sample count, scheduler and the search space."""

    metric: str | list[str] = "val_loss"
    mode: str | list[str] = "min"
    num_samples: int = 10
    search: Literal["optuna", "random"] = "optuna"  # optuna: TPE, or NSGA-II with several metrics
    scheduler: Literal["asha", "none"] = "asha"
    max_concurrent_trials: int | None = None  # None = CPUs // (num_workers * cpus_per_worker), >= 1
    grace_period: int = 2  # ASHA: evals before a trial can be stopped
    reduction_factor: float = 2.0
    seed: int | None = 0
    space: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        return [self.mode] * len(self.metrics) if isinstance(self.mode, str) else list(self.mode)

    def errors(self) -> list[str]:
        errors = []
        metrics, modes = self.metrics, self.modes
        if not metrics:
            errors.append("metric: got [], expected a metric name or a list of them")
        if len(modes) != len(metrics):
            errors.append(f"mode: got {len(modes)} modes, expected one per metric ({len(metrics)})")
        errors += [f"mode: got {fmt(m)}, expected min or max" for m in modes if m not in ("min", "max")]
        if self.scheduler == "asha" and len(metrics) > 1:
            errors.append(f"scheduler: got 'asha' with {len(metrics)} metrics, expected none (ASHA needs one metric)")
        if self.search == "random" and len(metrics) > 1:
            errors.append("search: got 'random' with several metrics, expected optuna (NSGA-II)")
        errors += _at_least("num_samples", self.num_samples, 1)
        if self.max_concurrent_trials is not None:
            errors += _at_least("max_concurrent_trials", self.max_concurrent_trials, 1)
        errors += _at_least("grace_period", self.grace_period, 1)
        if not self.reduction_factor > 1:
            errors.append(f"reduction_factor: got {fmt(self.reduction_factor)}, expected > 1")
        return errors


GENERIC_SECTIONS: dict[str, type] = {
    "train": TrainSection, "scaling": ScalingSection, "tracking": TrackingSection, "storage": StorageSection,
    "sweep": SweepSection,
}
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


# -- loading -----------------------------------------------------------------------------


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


def _family_of(name: Any) -> Family | None:
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
    family = _family_of(raw.get("family"))
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
            family = _family_of(text.strip())
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


# -- validation --------------------------------------------------------------------------


def validate(raw: dict[str, Any], source: str | None = None) -> tuple[Experiment | None, list[str]]:
    """Check every part of a raw experiment; returns ``(experiment or None, errors)``."""
    errors: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            errors.append(f"{key}: got an unknown key, expected one of {', '.join(TOP_LEVEL)}")

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        errors.append(f"name: got {fmt(name)}, expected a string of letters, digits, '_', '-', '.'")
    family = _family_of(raw.get("family"))
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
    its type errors and its own ``errors()`` appended. The model's own checks relate fields to each
    other, so they run only once every model field is well typed."""
    values, errs = check_section(section, raw, cls)
    errors += errs
    obj = cls(**values)
    if not (errs and section == "model"):
        errors += [f"{section}.{e}" for e in obj.errors()]
    return obj


def _at_least(path: str, value: Any, minimum: float) -> list[str]:
    if isinstance(value, (int, float)) and not value >= minimum:
        return [f"{path}: got {fmt(value)}, expected >= {minimum}"]
    return []


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
    errors += _check_space(sweep, family, sections)
    if family.checks is not None:
        errors += family.checks(_Parts(sections))
    return errors


class _Parts:
    """Attribute access to the sections being validated (what ``Family.checks`` receives)."""

    def __init__(self, sections: dict[str, Any]) -> None:
        self.__dict__.update(sections)
        self.evaluate = sections.get("evaluate")
        self.serve = sections.get("serve")


def _check_space(sweep: SweepSection, family: Family, sections: dict[str, Any]) -> list[str]:
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
    if family.checks is not None:
        errors += family.checks(_Parts(patched))
    return errors
