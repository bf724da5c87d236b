"""MLflow tracking: the only module that imports mlflow.

Everything goes through ``MlflowClient`` with an explicit tracking URI and run id (no
fluent global state), so the driver, Tune trial actors and Ray Train controllers can all
write to the same run. A relative ``sqlite:///mlflow.db`` URI is made absolute in the
driver, and new experiments put their artifacts in ``mlartifacts/`` next to the db file
(absolute), so every process writes to the same store and artifact folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray.train import Checkpoint
from ray.train.v2.api.callback import UserCallback

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000


def resolve_uri(uri: str) -> str:
    """Absolute form of a ``sqlite:///relative.db`` URI (other URIs unchanged)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = uri[len(prefix):]
        if not os.path.isabs(path):
            return prefix + str(Path(path).expanduser().absolute())
    return uri


def default_artifact_root(uri: str) -> str | None:
    """``<db folder>/mlartifacts`` for sqlite stores, else None (the server decides)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return str(Path(uri[len(prefix):]).parent / "mlartifacts")
    return None


def client(uri: str) -> Any:
    """An ``MlflowClient`` bound to ``uri``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(uri: str, name: str) -> str:
    """The id of MLflow experiment ``name``, created (with an absolute artifact root) if missing."""
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = default_artifact_root(uri)
    location = f"{Path(root) / name}" if root else None
    return c.create_experiment(name, artifact_location=location)


def start_run(uri: str, experiment_id: str, run_name: str, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> str:
    """Create a run (nested under ``parent_run_id`` if given); returns its id."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client(uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def resume_or_start_run(uri: str, experiment_id: str, id_file: Path, run_name: str,
                        tags: dict[str, str], parent_run_id: str | None = None) -> tuple[str, bool]:
    """The run whose id ``id_file`` holds (marked RUNNING again), else a new one whose id is written there.

    Returns ``(run_id, created)``; a command that resumes (``--resume``, a restored trial)
    keeps logging into the same run.
    """
    if id_file.exists():
        run_id = id_file.read_text().strip()
        set_running(uri, run_id)
        return run_id, False
    run_id = start_run(uri, experiment_id, run_name=run_name, parent_run_id=parent_run_id, tags=tags)
    id_file.write_text(run_id)
    return run_id, True


def end_run(uri: str, run_id: str, ok: bool = True) -> None:
    """Mark a run FINISHED (or FAILED)."""
    client(uri).set_terminated(run_id, status="FINISHED" if ok else "FAILED")


@contextmanager
def failed_on_error(uri: str, run_id: str) -> Iterator[None]:
    """Mark the run FAILED if the block raises an Exception, then re-raise it."""
    try:
        yield
    except Exception:
        end_run(uri, run_id, ok=False)
        raise


def set_running(uri: str, run_id: str) -> None:
    """Mark a resumed run RUNNING again."""
    client(uri).update_run(run_id, status="RUNNING")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"top_k": 2}} -> {"model.top_k": 2}`` (lists and empty dicts become strings)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log flattened params (values stringified and truncated to MLflow's limit)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(params).items()]
    c = client(uri)
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def log_metrics(uri: str, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
    """Log every numeric metric at ``step`` in one batch per 1000."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    c = client(uri)
    for i in range(0, len(items), 1000):
        c.log_batch(run_id, metrics=items[i:i + 1000])


def log_artifacts(uri: str, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
    client(uri).log_artifacts(run_id, str(local_dir), artifact_path)


def log_artifact(uri: str, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
    client(uri).log_artifact(run_id, str(local_path), artifact_path)


def download_artifacts(uri: str, run_id: str, artifact_path: str, dst: str | Path) -> Path:
    """Download ``artifact_path`` of a run (e.g. ``checkpoint``) into ``dst``; returns the local path."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(client(uri).download_artifacts(run_id, artifact_path, str(dst)))


def get_run(uri: str, run_id: str) -> Any:
    """The MLflow run ``run_id`` (``mlflow.entities.Run``)."""
    return client(uri).get_run(run_id)


def metric_history(uri: str, run_id: str, prefix: str = "", suffixes: tuple[str, ...] = ("",)
                   ) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(step, value), ...]}`` for the run's metrics named ``prefix...suffix``."""
    c = client(uri)
    keys = [k for k in c.get_run(run_id).data.metrics if k.startswith(prefix) and k.endswith(suffixes)]
    return {k: sorted((m.step, m.value) for m in c.get_metric_history(run_id, k)) for k in keys}


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    client(uri).log_text(run_id, text, artifact_file)


def set_tags(uri: str, run_id: str, tags: dict[str, Any]) -> None:
    c = client(uri)
    for k, v in tags.items():
        c.set_tag(run_id, k, str(v))


class MlflowReportCallback(UserCallback):
    """Ray Train callback (runs in the Train controller): logs rank 0's reports to an MLflow run."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        if metrics:
            log_metrics(self.uri, self.run_id, metrics[0], step=int(metrics[0].get("step", 0)))
