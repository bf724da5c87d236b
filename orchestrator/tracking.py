"""MLflow tracking: the only module that imports mlflow (and it imports no Ray).

- ``resolve_uri(uri)``: MLflow's convention. No URI given: ``$MLFLOW_TRACKING_URI``, else
  ``sqlite:///mlflow.db``; a relative sqlite path is made absolute (in the driver), so every
  process writes to the same store. New experiments put their artifacts in ``mlartifacts/``
  next to the db file (absolute).
- ``Store(uri)``: experiments and runs of one tracking store.
- ``Run(uri, run_id)``: one run handle; every write goes through ``MlflowClient`` with an
  explicit URI and run id (no fluent global state), so the driver, Tune trial actors and Ray
  Train controllers can all write to the same run. The handle pickles as two strings; its
  client is cached per process and URI.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000
DEFAULT_URI = "sqlite:///mlflow.db"
URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ALIAS = "current"  # the alias that moves to each newly registered version


def resolve_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``; a relative sqlite path made absolute."""
    uri = uri or os.environ.get(URI_ENV) or DEFAULT_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = uri[len(prefix):]
        if not os.path.isabs(path):
            return prefix + str(Path(path).expanduser().absolute())
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or folder a store URI writes to on the machine that uses it (``sqlite:///``, ``file:``,
    a bare path), or None for a server (``http(s)://``, ``databricks``...)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    if uri.startswith("file:"):
        return Path(uri[len("file:"):].removeprefix("//"))
    return None if "://" in uri or uri.startswith("databricks") else Path(uri)


def default_artifact_root(uri: str) -> str | None:
    """``<db folder>/mlartifacts`` for sqlite stores, else None (the server decides)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        return str(Path(uri[len(prefix):]).parent / "mlartifacts")
    return None


@lru_cache(maxsize=8)
def client(uri: str) -> Any:
    """The process's ``MlflowClient`` for ``uri`` (cached)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


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


class TextFile(Protocol):
    """A small text file: a ``Path``, or one in storage (``orchestrator.storage.StoredFile``)."""

    def exists(self) -> bool: ...
    def read_text(self) -> str: ...
    def write_text(self, text: str) -> Any: ...


@dataclass(frozen=True)
class Run:
    """A handle on one MLflow run."""

    uri: str
    run_id: str

    @property
    def client(self) -> Any:
        return client(self.uri)

    def end(self, ok: bool = True) -> None:
        """Mark the run FINISHED (or FAILED)."""
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")

    def set_running(self) -> None:
        """Mark a resumed run RUNNING again."""
        self.client.update_run(self.run_id, status="RUNNING")

    @contextmanager
    def failed_on_error(self) -> Iterator[None]:
        """Mark the run FAILED if the block raises an Exception, then re-raise it."""
        try:
            yield
        except Exception:
            self.end(ok=False)
            raise

    def log_params(self, params: dict[str, Any]) -> None:
        """Log flattened params (values stringified and truncated to MLflow's limit)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log every numeric metric at ``step``, in batches of 1000."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def register_version(self, name: str, artifact_path: str, tags: dict[str, Any],
                         alias: str = REGISTRY_ALIAS) -> str:
        """Register the run's artifact folder ``artifact_path`` as a new version of model ``name``
        (created if missing), tagged, and point ``alias`` at it; returns the version.

        MLflow reserves the alias ``latest`` (``models:/<name>/latest`` already means the newest
        version), so the moving alias is ``current``.
        """
        from mlflow.exceptions import MlflowException

        c = self.client
        try:
            c.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        source = f"{c.get_run(self.run_id).info.artifact_uri}/{artifact_path}"
        version = c.create_model_version(name, source, run_id=self.run_id,
                                         tags={k: str(v) for k, v in tags.items()})
        c.set_registered_model_alias(name, alias, version.version)
        return str(version.version)

    def download(self, artifact_path: str, dst: str | Path) -> Path:
        """Download ``artifact_path`` (e.g. ``checkpoint``) into ``dst``; returns the local path."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(self.run_id, artifact_path, str(dst)))

    def params(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.params)

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)

    def metric_history(self, prefix: str = "", suffixes: tuple[str, ...] = ("",)) -> dict[str, list[tuple[int, float]]]:
        """``{metric: [(step, value), ...]}`` for the run's metrics named ``prefix...suffix``."""
        keys = [k for k in self.client.get_run(self.run_id).data.metrics
                if k.startswith(prefix) and k.endswith(suffixes)]
        return {k: sorted((m.step, m.value) for m in self.client.get_metric_history(self.run_id, k)) for k in keys}


MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ModelVersion:
    """One version of a registered model: where its files are (a folder of its run's artifacts)."""

    name: str
    version: str
    run_id: str
    artifact_path: str  # inside the run's artifacts, e.g. registered/step_000048


@dataclass(frozen=True)
class RunSummary:
    """A finished look at one run: its params and each metric's latest value."""

    run_id: str
    name: str
    status: str  # FINISHED | FAILED | RUNNING | KILLED
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class Store:
    """A tracking store: experiments and the runs in them."""

    uri: str

    @classmethod
    def at(cls, uri: str | None = None) -> Store:
        """The store at ``resolve_uri(uri)``."""
        return cls(resolve_uri(uri))

    def experiment_id(self, name: str) -> str:
        """The id of MLflow experiment ``name``, created (with an absolute artifact root) if missing."""
        c = client(self.uri)
        found = c.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        root = default_artifact_root(self.uri)
        return c.create_experiment(name, artifact_location=f"{Path(root) / name}" if root else None)

    def run(self, run_id: str) -> Run:
        """A handle on an existing run; LookupError if the store has no such run."""
        try:
            client(self.uri).get_run(run_id)
        except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise LookupError(f"run {run_id} not found in {self.uri} (set MLFLOW_TRACKING_URI or pass "
                              "--tracking-uri to look elsewhere)") from exc
        return Run(self.uri, run_id)

    def model_version(self, uri: str) -> ModelVersion:
        """The registered version that ``uri`` names now: ``models:/<name>@<alias>`` (the alias's
        current target; ``@latest``: the newest version) or ``models:/<name>/<version>``; LookupError
        if there is none, ValueError if ``uri`` has neither form."""
        match = MODEL_URI_RE.match(uri)
        if match is None:
            raise ValueError(f"{uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
        name, alias, number = match.group("name", "alias", "version")
        c = client(self.uri)
        try:
            if alias == "latest":  # MLflow reserves this alias: it means the newest version
                versions = c.search_model_versions(f"name = '{name}'")
                number = str(max(int(v.version) for v in versions)) if versions else "0"
                alias = None
            found = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, number)
        except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
            raise LookupError(f"{uri}: no such registered model version in {self.uri}") from exc
        run_root = c.get_run(found.run_id).info.artifact_uri.rstrip("/")
        if not found.source.startswith(run_root + "/"):
            raise LookupError(f"{uri}: version {found.version} is not a folder of its run's artifacts "
                              f"({found.source})")
        return ModelVersion(name, str(found.version), found.run_id, found.source[len(run_root) + 1:])

    def children(self, parent_id: str) -> list[RunSummary]:
        """The runs nested under ``parent_id`` (a sweep's trials), oldest first."""
        c = client(self.uri)
        experiment_id = c.get_run(parent_id).info.experiment_id
        runs = c.search_runs([experiment_id], filter_string=f"tags.{PARENT_TAG} = '{parent_id}'",
                             order_by=["attributes.start_time ASC"], max_results=5000)
        return [RunSummary(r.info.run_id, r.info.run_name or r.info.run_id, r.info.status, dict(r.data.params),
                           dict(r.data.metrics)) for r in runs]

    def start_run(self, experiment_id: str, run_name: str, parent: Run | None = None,
                  tags: dict[str, str] | None = None) -> Run:
        """Create a run (nested under ``parent`` if given)."""
        all_tags = dict(tags or {})
        if parent is not None:
            all_tags[PARENT_TAG] = parent.run_id
        created = client(self.uri).create_run(experiment_id, run_name=run_name, tags=all_tags)
        return Run(self.uri, created.info.run_id)

    def resume_or_start_run(self, experiment_id: str, id_file: TextFile, run_name: str, tags: dict[str, str],
                            parent: Run | None = None) -> tuple[Run, bool]:
        """The run whose id ``id_file`` holds (marked RUNNING again), else a new one whose id is written there.
        ``id_file``: a ``Path``, or a file in storage (``orchestrator.storage.StoredFile``).

        Returns ``(run, created)``; a command that resumes (``--resume``, a restored trial)
        keeps logging into the same run.
        """
        if id_file.exists():
            run = Run(self.uri, id_file.read_text().strip())
            run.set_running()
            return run, False
        run = self.start_run(experiment_id, run_name, parent=parent, tags=tags)
        id_file.write_text(run.run_id)
        return run, True
