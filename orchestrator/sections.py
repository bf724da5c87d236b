"""The sections every family shares: ``train``, ``scaling``, ``tracking``, ``storage`` and ``sweep``.

Each is a ``Section`` dataclass whose fields declare what they accept (``orchestrator.schema.setting``);
relations between fields are the section's ``cross_checks``. The family's own sections (``model``,
``data``, ``evaluate``, ``serve``) come from its declaration (``orchestrator.contract.Family``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from orchestrator.schema import Section, fmt, setting

SWEEPABLE_SECTIONS = ("model", "data", "train")
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"  # experiment and registered-model names
LR_SCHEDULES = ("cosine", "linear")  # train.lr_schedule: the decay after warmup (trainables.training.optim)


@dataclass
class TrainSection(Section):
    """Optimisation: AdamW with linear warmup, then ``lr_schedule``: cosine decay to ``min_lr_ratio * lr``
    (the default) or linear decay to 0 at ``max_steps`` (``trainables/training/optim.py``)."""

    max_steps: int = setting(200, ge=1, doc="optimizer steps")
    batch_size: int = setting(16, ge=1, doc="per worker and micro-batch")
    grad_accum_steps: int = setting(1, ge=1, doc="micro-batches per optimizer step")
    lr: float = setting(1e-3, gt=0, doc="peak learning rate")
    min_lr_ratio: float = setting(0.1, ge=0, le=1, doc="the cosine decays to min_lr_ratio * lr")
    warmup_steps: int = setting(10, ge=0, doc="linear warmup from 0 to lr")
    lr_schedule: str = setting("cosine", one_of=LR_SCHEDULES,
                               doc="after warmup: cosine (down to min_lr_ratio * lr) or linear (down to 0 at "
                                   "max_steps, as transformers' get_linear_schedule_with_warmup)")
    weight_decay: float = setting(0.1, ge=0, doc="AdamW's decoupled weight decay")
    grad_clip: float | None = setting(1.0, gt=0, doc="gradient norm clipping; null = no clipping")
    eval_every: int = setting(25, ge=1, doc="steps between eval + report + checkpoint")
    eval_batches: int = setting(4, ge=1, doc="validation batches per eval")
    seed: int = setting(0, doc="seeds data order and initialisation")
    keep_checkpoints: int = setting(2, ge=1, doc="newest checkpoints kept by Ray Train")
    max_failures: int = setting(1, ge=0, special=(-1, "no limit"),
                                doc="worker-group restarts from the latest checkpoint after a failure")


@dataclass
class ScalingSection(Section):
    """Ray Train scaling: worker count, devices and the distributed strategy."""

    num_workers: int = setting(1, ge=1, doc="Ray Train workers (one process each)")
    use_gpu: bool = setting(False, doc="one GPU per worker")
    strategy: Literal["ddp", "deepspeed"] = setting("ddp", doc="how workers share the model")
    zero_stage: int = setting(0, one_of=(0, 1, 2, 3), doc="DeepSpeed ZeRO stage (deepspeed only)")
    cpus_per_worker: float = setting(1.0, gt=0, doc="CPUs Ray reserves per worker")

    def cross_checks(self) -> list[str]:
        if self.zero_stage and self.strategy != "deepspeed":
            return [f"zero_stage: got {self.zero_stage}, expected 0 unless scaling.strategy is deepspeed"]
        return []


@dataclass
class TrackingSection(Section):
    """MLflow: tracking URI and experiment name.

    ``uri``: null = MLflow's convention, ``$MLFLOW_TRACKING_URI`` if set, else
    ``sqlite:///mlflow.db`` (a relative sqlite path is made absolute in the driver).
    """

    uri: str | None = setting(None, nonempty=True, expect="a URI like sqlite:///mlflow.db",
                              doc="the MLflow tracking URI")
    experiment: str | None = setting(None, doc="the MLflow experiment; null = the experiment's name")
    registered_model: str | None = setting(
        None, pattern=NAME_PATTERN, expect="a name of letters, digits, '_', '.', '-'",
        doc="checkpoints a family marks for the registry (registry/* report keys, e.g. each continual-learning "
            "phase) become versions of this MLflow registered model, alias current on the newest; a sweep trial "
            "registers under <name>-<trial>. null = register nothing")


@dataclass
class StorageSection(Section):
    """Where checkpoints, Tune's trial state and ``--resume`` state live (``orchestrator/storage.py``).

    ``path``: null = ``$MOE_ORCH_STORAGE`` if set, else ``./ray_results`` (made absolute in the driver);
    a folder, a shared mount every node sees, or ``s3://bucket/prefix`` / ``gs://bucket/prefix``
    (an S3-compatible server: ``?endpoint_override=http://host:port``). Credentials come from the
    environment, never from here.
    """

    path: str | None = setting(None, doc="a folder, a shared mount or an s3:// / gs:// URI")

    def cross_checks(self) -> list[str]:
        from orchestrator.storage import uri_errors

        return [f"path: {e}" for e in uri_errors(self.path)] if self.path is not None else []


@dataclass
class SweepSection(Section):
    """Ray Tune + Optuna: objective(s), sample count, scheduler and the search space."""

    metric: str | list[str] = setting("val_loss", nonempty=True, expect="a metric name or a list of them",
                                      doc="the objective; a list = several objectives (NSGA-II)")
    mode: str | list[str] = setting("min", doc="min or max, one per metric")
    num_samples: int = setting(10, ge=1, doc="trials")
    search: Literal["optuna", "random"] = setting("optuna", doc="optuna: TPE, or NSGA-II with several metrics")
    scheduler: Literal["asha", "none"] = setting("asha", doc="ASHA stops poor trials early")
    max_concurrent_trials: int | None = setting(None, ge=1,
                                                doc="null = CPUs // (num_workers * cpus_per_worker), >= 1")
    grace_period: int = setting(2, ge=1, doc="ASHA: evals before a trial can be stopped")
    reduction_factor: float = setting(2.0, gt=1, doc="ASHA: keep 1 / reduction_factor of trials per rung")
    seed: int | None = setting(0, doc="the search algorithm's seed; null = random")
    space: dict[str, Any] = setting(factory=dict, doc="dotted field -> distribution ({choice: [...]}, "
                                                      "{uniform: [a, b]}, {loguniform: [a, b]}, {randint: [a, b]}, "
                                                      "{grid: [...]})")

    @property
    def metrics(self) -> list[str]:
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def modes(self) -> list[str]:
        return [self.mode] * len(self.metrics) if isinstance(self.mode, str) else list(self.mode)

    def cross_checks(self) -> list[str]:
        errors = []
        metrics, modes = self.metrics, self.modes
        if len(modes) != len(metrics):
            errors.append(f"mode: got {len(modes)} modes, expected one per metric ({len(metrics)})")
        errors += [f"mode: got {fmt(m)}, expected min or max" for m in modes if m not in ("min", "max")]
        if self.scheduler == "asha" and len(metrics) > 1:
            errors.append(f"scheduler: got 'asha' with {len(metrics)} metrics, expected none (ASHA needs one metric)")
        if self.search == "random" and len(metrics) > 1:
            errors.append("search: got 'random' with several metrics, expected optuna (NSGA-II)")
        return errors


GENERIC_SECTIONS: dict[str, type[Section]] = {
    "train": TrainSection, "scaling": ScalingSection, "tracking": TrackingSection, "storage": StorageSection,
    "sweep": SweepSection,
}
