"""Experiment files: schema, loading, ``key=value`` overrides and validation (all errors at once).

An experiment YAML has the top-level keys ``name``, ``family`` and the sections below.
``model`` holds the family's config fields (for ``more``: ``trainables.more.MoREConfig``).
``load_experiment(path, overrides)`` returns an ``Experiment`` or raises
``ExperimentError`` whose ``errors`` lists every problem as ``path: got X, expected Y``;
nothing here starts Ray.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrator import space as space_mod
from orchestrator.families import FAMILIES, Family
from orchestrator.schema import check, check_section, describe, dump_yaml, field_types, fmt, load_yaml
from trainables.more.evaluation.suite import EvalSettings

SWEEPABLE_SECTIONS = ("model", "data", "train")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DataSection:
    """Which corpus to train on (``trainables.data.load_text`` name) and where it lives."""

    dataset: str = "tinyshakespeare"
    root: str | None = None  # data root; None = $MOE_ORCH_DATA, else ./data (resolved to an absolute path)
    train_split: str = "train"
    val_split: str = "validation"
    # training mixture (trainables.data.mixture): relative weights of lm (the dataset above), babi, arithmetic;
    # null = train on the dataset alone
    mixture: dict[str, float] | None = None
    arith_train_digits: int = 3  # arithmetic in the mixture: operands of 1..N digits


@dataclass
class TrainSection:
    """Optimisation: AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    max_steps: int = 200
    batch_size: int = 16  # per worker
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0  # null = no clipping
    eval_every: int = 25  # steps between eval + report + checkpoint
    eval_batches: int = 4
    seed: int = 0
    keep_checkpoints: int = 2  # newest checkpoints kept by Ray Train


@dataclass
class ScalingSection:
    """Ray Train scaling: worker count, devices and the distributed strategy."""

    num_workers: int = 1
    use_gpu: bool = False
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3 (deepspeed only)
    cpus_per_worker: float = 1.0


@dataclass
class TrackingSection:
    """MLflow: tracking URI (a relative sqlite path is made absolute) and experiment name."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None  # None = the experiment's name


@dataclass
class SweepSection:
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


INGRESS_MODES = ("proxy", "direct")


@dataclass
class ServeSection:
    """Ray Serve deployment of a trained model (``moe-orch serve``): HTTP, batching, autoscaling, input limits."""

    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/ensemble"
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 16.0  # autoscaling target per replica
    max_ongoing_requests: int | None = None  # per replica; None = 2 * max_batch_size (must be >= max_batch_size)
    max_batch_size: int = 32  # requests per @serve.batch call
    batch_wait_timeout_s: float = 0.01
    max_texts_per_request: int = 64  # more gets HTTP 413
    max_text_chars: int = 2000  # a longer text gets HTTP 413 (rejected, not truncated)
    num_cpus_per_replica: float = 1.0
    access_log: bool = True  # one log line per request in each replica (off for load tests)
    # "proxy": Ray's HTTP proxy routes every request to the replicas (autoscaling behind one port).
    # "direct": Ray Serve's direct ingress; the single replica's own HTTP server answers on host:port,
    # with no proxy hop (more throughput on a small box; needs min_replicas = max_replicas = 1;
    # Ray's own proxy then takes port + 1).
    ingress: str = "proxy"


@dataclass
class EvaluateSection(EvalSettings):
    """The MoRE evaluation suite (``moe-orch evaluate``; fields: ``trainables.more.evaluation.EvalSettings``).

    ``at_end: true`` evaluates the final checkpoint of every train run and sweep trial.
    """

    at_end: bool = False


SECTIONS: dict[str, type] = {
    "data": DataSection,
    "train": TrainSection,
    "scaling": ScalingSection,
    "tracking": TrackingSection,
    "sweep": SweepSection,
    "evaluate": EvaluateSection,
    "serve": ServeSection,
}
TOP_LEVEL = ("name", "family", "model", *SECTIONS)


class ExperimentError(ValueError):
    """An invalid experiment; ``errors`` holds one ``path: got X, expected Y`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("invalid experiment:\n  " + "\n  ".join(errors))
        self.errors = errors


@dataclass
class Experiment:
    """A validated experiment. ``model`` is the family config as a complete dict."""

    name: str
    family: str
    model: dict[str, Any]
    data: DataSection
    train: TrainSection
    scaling: ScalingSection
    tracking: TrackingSection
    sweep: SweepSection
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    serve: ServeSection = field(default_factory=ServeSection)
    source: str | None = None  # the YAML file it came from

    @property
    def family_spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def metrics(self) -> list[str]:
        """``sweep.metric`` as a list."""
        return [self.sweep.metric] if isinstance(self.sweep.metric, str) else list(self.sweep.metric)

    @property
    def modes(self) -> list[str]:
        """``sweep.mode`` as a list, one per metric."""
        return [self.sweep.mode] * len(self.metrics) if isinstance(self.sweep.mode, str) else list(self.sweep.mode)

    @property
    def dims(self) -> list[space_mod.Dim]:
        """The parsed ``sweep.space``."""
        return [space_mod.parse_dim(k, v)[0] for k, v in self.sweep.space.items()]

    def to_dict(self) -> dict[str, Any]:
        """The resolved experiment as plain nested data (what the worker loop receives)."""
        out: dict[str, Any] = {"name": self.name, "family": self.family, "model": dict(self.model)}
        for section in SECTIONS:
            out[section] = dataclasses.asdict(getattr(self, section))
        return out

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    def with_values(self, values: dict[str, Any]) -> Experiment:
        """A copy with dotted-path values set (a trial's sampled config); not re-validated."""
        data = self.to_dict()
        for key, value in values.items():
            section, _, name = key.partition(".")
            data[section][name] = value
        return experiment_from_dict(data, source=self.source)


# -- loading -----------------------------------------------------------------------------


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read an experiment YAML, apply ``key=value`` overrides and validate everything.

    Raises ``ExperimentError`` listing every problem (file, override and schema errors together).
    """
    path = Path(path)
    errors: list[str] = []
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
    errors += apply_overrides(raw, overrides)
    experiment, more = validate(raw, source=str(path))
    errors += more
    if errors:
        raise ExperimentError(errors)
    assert experiment is not None
    return experiment


def experiment_from_dict(data: dict[str, Any], source: str | None = None) -> Experiment:
    """Validate plain data (e.g. ``Experiment.to_dict()``); raises ``ExperimentError``."""
    experiment, errors = validate(dict(data), source=source)
    if errors:
        raise ExperimentError(errors)
    assert experiment is not None
    return experiment


def expected_type(dotted: str, family: str | None) -> Any:
    """The type hint at ``section.field`` (None if the path does not exist)."""
    section, _, name = dotted.partition(".")
    if section == "model":
        cls = FAMILIES[family].config_cls if family in FAMILIES else None
        return field_types(cls).get(name) if cls and name else None
    if section in SECTIONS and name:
        return field_types(SECTIONS[section]).get(name)
    if section in ("name", "family") and not name:
        return str
    return None


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
    family = raw.get("family") if isinstance(raw.get("family"), str) else None
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            errors.append(f"{item}: got a malformed override, expected key=value (e.g. train.lr=3e-4)")
            continue
        if key == "family":
            family = text.strip()
        if key.startswith("sweep.space."):
            sweep = raw.setdefault("sweep", {}) or {}
            raw["sweep"] = sweep
            sweep.setdefault("space", {})
            if not isinstance(sweep["space"], dict):
                sweep["space"] = {}
            sweep["space"][key.removeprefix("sweep.space.")] = load_yaml(text)
            continue
        value = parse_override_value(text, expected_type(key, family))
        parts = key.split(".")
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


def serve_with_overrides(settings: ServeSection,
                         overrides: list[str] | tuple[str, ...]) -> tuple[ServeSection, list[str]]:
    """``settings`` with ``serve.<key>=value`` overrides applied and checked; ``(settings, errors)``."""
    raw: dict[str, Any] = {"serve": dataclasses.asdict(settings)}
    errors = [f"{item}: got a key outside serve, expected serve.<key>=value (the other sections belong to "
              "an experiment YAML)" for item in overrides if not item.strip().startswith("serve.")]
    errors += apply_overrides(raw, [item for item in overrides if item.strip().startswith("serve.")])
    values, section_errors = check_section("serve", raw["serve"], ServeSection)
    updated = ServeSection(**values)  # the well-typed values, so every problem is reported at once
    errors += section_errors + check_serve(updated)
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
    family_name = raw.get("family")
    family = FAMILIES.get(family_name) if isinstance(family_name, str) else None
    if family is None:
        errors.append(f"family: got {fmt(family_name)}, expected one of {', '.join(sorted(FAMILIES))}")

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        values, errs = check_section(section, raw.get(section), cls)
        errors += errs
        sections[section] = cls(**values)

    model: dict[str, Any] | None = None
    if family is not None:
        values, errs = check_section("model", raw.get("model"), family.config_cls)
        errors += errs
        model_cfg = family.config_cls(**values)
        if not errs:
            errors += [f"model.{e}" for e in model_cfg.errors()]
        model = model_cfg.to_dict()

    errors += _check_data(sections["data"], family)
    errors += _check_train(sections["train"])
    errors += _check_scaling(sections["scaling"])
    errors += _check_tracking(sections["tracking"])
    errors += _check_sweep(sections["sweep"], family, model, sections)
    errors += _check_evaluate(sections["evaluate"], sections["data"], sections["sweep"])
    errors += check_serve(sections["serve"])

    if errors or model is None:
        return None, errors
    data = sections["data"]
    if data.root is None:  # resolved here, in the driver: Ray workers run in another cwd/env
        from trainables.data import data_root

        data.root = str(data_root())
    data.root = str(Path(data.root).expanduser().absolute())
    return Experiment(name=name, family=family_name, model=model, source=source, **sections), []


def _positive(path: str, value: Any, minimum: float = 1) -> list[str]:
    if isinstance(value, (int, float)) and not value >= minimum:
        return [f"{path}: got {fmt(value)}, expected >= {minimum}"]
    return []


def _check_data(data: DataSection, family: Family | None) -> list[str]:
    from trainables.data import dataset_splits, list_datasets

    known = list(family.datasets) if family is not None and family.datasets else list_datasets()
    if data.dataset not in known:
        return [f"data.dataset: got {fmt(data.dataset)}, expected one of {', '.join(known)}"]
    errors = []
    splits = family.splits if family is not None and family.datasets else dataset_splits(data.dataset)
    for key in ("train_split", "val_split"):
        if getattr(data, key) not in splits:
            errors.append(f"data.{key}: got {fmt(getattr(data, key))}, expected one of {', '.join(splits)}")
    return errors


def _check_train(train: TrainSection) -> list[str]:
    errors = []
    for key in ("max_steps", "batch_size", "eval_every", "eval_batches", "keep_checkpoints"):
        errors += _positive(f"train.{key}", getattr(train, key))
    errors += _positive("train.warmup_steps", train.warmup_steps, 0)
    errors += _positive("train.weight_decay", train.weight_decay, 0)
    if not train.lr > 0:
        errors.append(f"train.lr: got {fmt(train.lr)}, expected > 0")
    if not 0 <= train.min_lr_ratio <= 1:
        errors.append(f"train.min_lr_ratio: got {fmt(train.min_lr_ratio)}, expected 0 <= x <= 1")
    if train.grad_clip is not None and not train.grad_clip > 0:
        errors.append(f"train.grad_clip: got {fmt(train.grad_clip)}, expected null or > 0")
    return errors


def _check_scaling(scaling: ScalingSection) -> list[str]:
    errors = _positive("scaling.num_workers", scaling.num_workers)
    if not scaling.cpus_per_worker > 0:
        errors.append(f"scaling.cpus_per_worker: got {fmt(scaling.cpus_per_worker)}, expected > 0")
    if scaling.zero_stage not in (0, 1, 2, 3):
        errors.append(f"scaling.zero_stage: got {fmt(scaling.zero_stage)}, expected one of 0, 1, 2, 3")
    elif scaling.zero_stage and scaling.strategy != "deepspeed":
        errors.append(f"scaling.zero_stage: got {scaling.zero_stage}, expected 0 unless scaling.strategy is deepspeed")
    return errors


def _check_evaluate(evaluate: EvaluateSection, data: DataSection, sweep: SweepSection) -> list[str]:
    """The evaluation settings, the training mixture they rely on, and sweeps on evaluation metrics
    (reported once, at the end of a trial: they need evaluate.at_end, no ASHA, and Optuna's
    multi-objective mode, since TPE reads its single metric at every report)."""
    from trainables.data.mixture import mixture_errors
    from trainables.more.evaluation.suite import is_eval_metric

    errors = mixture_errors(data.mixture, data.arith_train_digits)
    errors += [f"evaluate.{e}" for e in evaluate.errors()]
    short = [d for d in evaluate.arith_long_digits if d <= data.arith_train_digits]
    if short:
        errors.append(f"evaluate.arith_long_digits: got {short}, expected lengths > data.arith_train_digits "
                      f"({data.arith_train_digits})")
    metrics = [sweep.metric] if isinstance(sweep.metric, str) else list(sweep.metric)
    for m in [m for m in metrics if is_eval_metric(m)]:
        if not evaluate.at_end:
            errors.append(f"sweep.metric: got {m!r}, an evaluation metric, expected evaluate.at_end: true")
        elif sweep.scheduler != "none":
            errors.append(f"sweep.scheduler: got {sweep.scheduler!r} with evaluation metric {m!r}, expected none")
        elif len(metrics) == 1 and sweep.search == "optuna":
            errors.append(f"sweep.metric: got {m!r} alone with search optuna, expected it in a list of metrics "
                          "(NSGA-II) or search: random")
    return errors


def _check_tracking(tracking: TrackingSection) -> list[str]:
    if not tracking.uri:
        return [f"tracking.uri: got {fmt(tracking.uri)}, expected a URI like sqlite:///mlflow.db"]
    return []


def check_serve(serve: ServeSection) -> list[str]:
    """Errors of a ``serve:`` section (also used by ``serve/`` on settings read from a checkpoint)."""
    errors = []
    for key in ("min_replicas", "max_batch_size", "max_texts_per_request", "max_text_chars"):
        errors += _positive(f"serve.{key}", getattr(serve, key))
    errors += _positive("serve.max_replicas", serve.max_replicas, max(1, serve.min_replicas))
    top_port = 65534 if serve.ingress == "direct" else 65535  # direct: Ray's proxy takes port + 1
    if not 0 < serve.port <= top_port:
        errors.append(f"serve.port: got {fmt(serve.port)}, expected 1..{top_port}")
    if not serve.route_prefix.startswith("/"):
        errors.append(f"serve.route_prefix: got {fmt(serve.route_prefix)}, expected a path starting with /")
    if serve.max_ongoing_requests is not None and serve.max_ongoing_requests < serve.max_batch_size:
        errors.append(f"serve.max_ongoing_requests: got {serve.max_ongoing_requests}, expected null or "
                      f">= serve.max_batch_size ({serve.max_batch_size})")
    for key in ("target_ongoing_requests", "num_cpus_per_replica"):
        if not getattr(serve, key) > 0:
            errors.append(f"serve.{key}: got {fmt(getattr(serve, key))}, expected > 0")
    if serve.batch_wait_timeout_s < 0:
        errors.append(f"serve.batch_wait_timeout_s: got {fmt(serve.batch_wait_timeout_s)}, expected >= 0")
    if serve.ingress not in INGRESS_MODES:
        errors.append(f"serve.ingress: got {fmt(serve.ingress)}, expected one of {', '.join(INGRESS_MODES)}")
    elif serve.ingress == "direct":
        for key in ("min_replicas", "max_replicas"):
            if getattr(serve, key) != 1:
                errors.append(f"serve.{key}: got {fmt(getattr(serve, key))}, expected 1 with serve.ingress 'direct' "
                              "(one replica answers on serve.port; use ingress 'proxy' to autoscale)")
    return errors


def _check_sweep(sweep: SweepSection, family: Family | None, model: dict[str, Any] | None,
                 sections: dict[str, Any]) -> list[str]:
    errors = []
    metrics = [sweep.metric] if isinstance(sweep.metric, str) else list(sweep.metric)
    modes = [sweep.mode] * len(metrics) if isinstance(sweep.mode, str) else list(sweep.mode)
    if not metrics:
        errors.append("sweep.metric: got [], expected a metric name or a list of them")
    for m in metrics:
        if family is not None and not family.reports(m):
            known = ", ".join(family.metrics) + "".join(f" or {p}..." for p in family.metric_prefixes)
            errors.append(f"sweep.metric: got {fmt(m)}, expected one of {known}")
    if len(modes) != len(metrics):
        errors.append(f"sweep.mode: got {len(modes)} modes, expected one per metric ({len(metrics)})")
    for m in modes:
        if m not in ("min", "max"):
            errors.append(f"sweep.mode: got {fmt(m)}, expected min or max")
    if sweep.scheduler == "asha" and len(metrics) > 1:
        errors.append(f"sweep.scheduler: got 'asha' with {len(metrics)} metrics, expected none (ASHA needs one metric)")
    if sweep.search == "random" and len(metrics) > 1:
        errors.append("sweep.search: got 'random' with several metrics, expected optuna (NSGA-II)")
    errors += _positive("sweep.num_samples", sweep.num_samples)
    if sweep.max_concurrent_trials is not None:
        errors += _positive("sweep.max_concurrent_trials", sweep.max_concurrent_trials)
    errors += _positive("sweep.grace_period", sweep.grace_period)
    if not sweep.reduction_factor > 1:
        errors.append(f"sweep.reduction_factor: got {fmt(sweep.reduction_factor)}, expected > 1")
    errors += _check_space(sweep, family, model, sections)
    return errors


def _check_space(sweep: SweepSection, family: Family | None, model: dict[str, Any] | None,
                 sections: dict[str, Any]) -> list[str]:
    """Each key must name a model/data/train field; each value must fit it, alone and in combination."""
    errors: list[str] = []
    dims: list[space_mod.Dim] = []
    for key, spec in sweep.space.items():
        section, _, name = str(key).partition(".")
        tp = expected_type(str(key), family.name if family else None)
        if section not in SWEEPABLE_SECTIONS or tp is None:
            fields = [f"model.{f}" for f in field_types(family.config_cls)] if family else []
            for s in ("data", "train"):
                fields += [f"{s}.{f}" for f in field_types(SECTIONS[s])]
            hint = "a field of " + ", ".join(SWEEPABLE_SECTIONS)
            hint += f" (e.g. {', '.join(fields[:4])}, ...)" if fields else ""
            errors.append(f"sweep.space.{key}: got an unknown key, expected {hint}")
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
    if model is None or family is None:
        return errors

    # Each value alone, then every combination: the family's own checks (e.g. top_k <= num_experts).
    # Errors the base config already has are reported once, elsewhere.
    base = set(_config_errors({}, family, model, sections))
    new_errors = lambda values: [e for e in _config_errors(values, family, model, sections) if e not in base]
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


def _config_errors(values: dict[str, Any], family: Family, model: dict[str, Any],
                   sections: dict[str, Any]) -> list[str]:
    """Errors of the model/train/data config with dotted ``values`` substituted."""
    model_values = dict(model)
    errors: list[str] = []
    patched: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section == "model":
            model_values[name] = value
        else:
            patched.setdefault(section, {})[name] = value
    errors += [f"model.{e}" for e in family.config_cls.from_dict(model_values).errors()]
    for section, changes in patched.items():
        obj = dataclasses.replace(sections[section], **changes)
        errors += _check_data(obj, family) if section == "data" else _check_train(obj)
    return errors
