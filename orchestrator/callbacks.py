"""The Ray callbacks of ``train`` and ``sweep`` (MLflow logging, terminal progress), and the
split of a run's wall time.

- ``MlflowReportCallback``: a Ray Train callback (runs in the Train controller) logging rank
  0's reports to an MLflow run.
- ``TrainProgress``: a Ray Train callback printing one line per report (Ray forwards the
  controller's prints to the driver).
- ``SweepProgress``: a Ray Tune callback (runs in the driver) printing a line when a trial
  starts, reports, finishes or fails, and a status line every ``every_s`` seconds. It
  replaces Tune's own verbose output, whose result boxes list every per-layer routing key.
- ``overhead_split``: where a run's wall time went, from timestamps the worker loop reports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback
from ray.tune import Callback

from orchestrator.tracking import Run

NAN = float("nan")
REGISTRY_PREFIX = "registry/"  # report keys that mark a checkpoint for the model registry
Labels = tuple[tuple[str, str], ...]  # (metric key, label) pairs: a family's ``progress``
THROUGHPUT = (("tokens_per_s", "tok/s"), ("examples_per_s", "ex/s"))  # what the training loop reports


def _fmt_metrics(m: dict[str, Any], labels: Labels) -> str:
    """``train_loss 2.31 val_loss 2.25 ppl 9.49`` for the keys present."""
    return " ".join(f"{label} {m[key]:.4f}" for key, label in labels if isinstance(m.get(key), (int, float)))


class MlflowReportCallback(UserCallback):
    """Logs rank 0's metrics of every ``ray.train.report`` to ``run`` at its ``step``.

    A report whose metrics carry ``registry/<tag>`` keys (a family marks the checkpoints worth
    keeping, e.g. the end of each continual-learning phase) also has its ``model/`` logged under
    ``registered/step_<step>`` and registered as a new version of ``registered_model`` (when set),
    tagged with those keys and the step; the alias ``current`` moves to it.
    """

    def __init__(self, run: Run, registered_model: str | None = None) -> None:
        self.run, self.registered_model = run, registered_model

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        step = int(metrics[0].get("step", 0))
        self.run.log_metrics(metrics[0], step=step)
        tags = {k.removeprefix(REGISTRY_PREFIX): _tag(v) for k, v in metrics[0].items()
                if k.startswith(REGISTRY_PREFIX)}
        if tags and checkpoint is not None and self.registered_model:
            artifact_path = f"registered/step_{step:06d}"
            with checkpoint.as_directory() as local:
                self.run.log_artifacts(Path(local) / "model", artifact_path)
            version = self.run.register_version(self.registered_model, artifact_path, {**tags, "step": step})
            print(f"[registry] {self.registered_model} version {version} (step {step}, "
                  + ", ".join(f"{k} {v}" for k, v in tags.items()) + "); alias current", flush=True)


def _tag(value: Any) -> str:
    """A registry tag value: whole floats without their ``.0``."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


class TrainProgress(UserCallback):
    """One line per ``ray.train.report``: step, the family's progress metrics, LR and throughput."""

    def __init__(self, label: str, max_steps: int, labels: Labels) -> None:
        self.label, self.max_steps, self.labels = label, max_steps, labels

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        m = metrics[0] if metrics else {}
        extra = f" lr {m['lr']:.2e}" if "lr" in m else ""
        extra += "".join(f" {label} {m[key]:.0f}" for key, label in THROUGHPUT if key in m)
        print(f"[{self.label}] step {m.get('step', '?')}/{m.get('max_steps', self.max_steps)} "
              f"{_fmt_metrics(m, self.labels)}{extra}",
              flush=True)


def trial_name(trial: Any) -> str:
    """The deterministic name we gave the trial (``{experiment}_{index:03d}``)."""
    return getattr(trial, "custom_trial_name", None) or str(trial)


class SweepProgress(Callback):
    """Concise live progress of a sweep (replaces Tune's verbose tables)."""

    def __init__(self, metric: str, mode: str, max_steps: int, total: int, labels: Labels,
                 every_s: float = 30.0) -> None:
        self.metric, self.mode, self.max_steps, self.total, self.every_s = metric, mode, max_steps, total, every_s
        self.labels = labels
        self.started = time.time()
        self.last_status = self.started
        self.best: tuple[float, str] | None = None

    def _clock(self) -> str:
        minutes, seconds = divmod(int(time.time() - self.started), 60)
        return f"[{minutes:02d}:{seconds:02d}]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        config = " ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in trial.config.items())
        print(f"{self._clock()} {trial_name(trial)} started: {config}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if isinstance(value, (int, float)):
            better = self.best is None or (value < self.best[0] if self.mode == "min" else value > self.best[0])
            if better:
                self.best = (float(value), trial_name(trial))
        print(f"{self._clock()} {trial_name(trial)} step {result.get('step', '?')}/"
              f"{result.get('max_steps', self.max_steps)} "
              f"{_fmt_metrics(result, self.labels)}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        max_steps = last.get("max_steps", self.max_steps)  # a recipe may set its own (e.g. from a FLOPs budget)
        stopped = "" if last.get("step", max_steps) >= max_steps else " (stopped early by ASHA)"
        print(f"{self._clock()} {trial_name(trial)} finished at step {last.get('step', '?')}{stopped}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{self._clock()} {trial_name(trial)} FAILED; see {trial.local_path or 'its trial folder'}", flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.time() - self.last_status < self.every_s:
            return
        self.last_status = time.time()
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        done = counts.get("TERMINATED", 0) + counts.get("ERROR", 0)
        best = f"; best {self.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"{self._clock()} {done}/{self.total} trials done, {counts.get('RUNNING', 0)} running, "
              f"{counts.get('PENDING', 0)} pending{best}", flush=True)


def overhead_split(started: float, ended: float, metrics: dict[str, Any],
                   process_started: float | None = None) -> dict[str, float | None]:
    """Where a driver's wall time (``started`` to ``ended``) went, in seconds.

    ``metrics`` are the worker loop's last report: ``worker_started_at`` (unix time its
    process was created), ``loop_started_at`` (when the loop function began),
    ``setup_s`` (loop start to first step: data, model, optimizer, wrapper) and
    ``train_time_s`` (loop start to last report). ``process_started`` is when the
    driver's own process was created (the Tune trial actor), if known.

    - ``actor_start_s``: trial actor process creation to driver start (Tune);
    - ``spawn_s``: driver start to worker process creation (Train controller actor,
      placement group, worker actor);
    - ``worker_init_s``: worker process creation to loop start (imports, process group);
    - ``loop_setup_s``: inside the loop, before the first step;
    - ``teardown_s``: last report to the driver's return (checkpoint upload, shutdown).

    When the loop runs in the driver's own process (a 1-worker sweep trial), ``spawn_s`` and
    ``worker_init_s`` are 0.
    """
    out: dict[str, float | None] = {
        "wall_time_s": ended - started, "train_time_s": metrics.get("train_time_s"),
        "actor_start_s": started - process_started if process_started else None,
        "startup_s": None, "spawn_s": None, "worker_init_s": None,
        "loop_setup_s": metrics.get("setup_s"), "teardown_s": None,
    }
    loop_start, train = metrics.get("loop_started_at"), metrics.get("train_time_s")
    worker_start = metrics.get("worker_started_at")
    if loop_start is not None and train is not None:
        out["startup_s"] = loop_start - started
        out["teardown_s"] = ended - (loop_start + train)
    if worker_start is not None and loop_start is not None:
        in_process = worker_start <= started  # the loop ran in the driver's own process: no worker to spawn
        out["spawn_s"] = 0.0 if in_process else worker_start - started
        out["worker_init_s"] = 0.0 if in_process else loop_start - worker_start
    return out
