"""What ``moe-orch serve TARGET`` serves: an experiment's newest checkpoint, an MLflow run, or a directory.

``resolve_target`` turns TARGET into a ``Target``: the checkpoint ``source`` handed to the
Serve deployment, a local copy of the checkpoint, its family and the ``serve:`` settings to
use (experiment file > checkpoint metadata > the family's defaults).

- an experiment YAML: the newest ``<storage>/<name>/train-*/checkpoint_*/model`` written by
  ``moe-orch train`` (storage: ``storage.path``, ``./ray_results`` unless set). In an object store,
  the newest run's ``checkpoint`` artifact in MLflow instead (its id is in the run folder), so
  replicas on any node download it themselves;
- an MLflow run id (32 hex digits): the run's ``checkpoint`` artifact, downloaded once here;
  Serve config files keep ``{run_id, tracking_uri}`` so each replica downloads it itself;
- a directory: a checkpoint (a ``config.json`` manifest), a Ray checkpoint (``model/``), or a
  ``train-*`` run folder (its newest checkpoint);
- a registered model version: ``models:/<name>@<alias>`` (``@current`` moves to each version a run
  registers; ``@latest`` is the newest) or ``models:/<name>/<version>``, downloaded once here;
  replicas that swap to it later download it themselves (``{run_id, artifact_path}``).

A family without a serve endpoint is refused with a message naming it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.checkpoints import RUN_ID_RE, find_checkpoint_dir, newest_checkpoint
from orchestrator.contract import Family, ServeSection, section_from
from orchestrator.experiment import Experiment
from orchestrator.registry import family_ref, family_with
from trainables.training.manifest import UnsafeCheckpointError, read_manifest


class TargetError(ValueError):
    """TARGET names nothing servable; the message says what was looked for."""


@dataclass
class Target:
    source: dict[str, Any]  # for the deployment: {"checkpoint": dir} or {"run_id", "tracking_uri"}
    local_dir: Path  # the checkpoint, readable here
    family: Family
    settings: ServeSection
    description: str
    download_dir: Path | None = None  # a temporary folder holding a downloaded run's checkpoint
    version: str | None = None  # the registered version, for models:/ targets

    @property
    def family_ref(self) -> str:
        return family_ref(self.family.name)

    def cleanup(self) -> None:
        """Delete the temporary download, if any (call once the app that reads ``local_dir`` has stopped)."""
        if self.download_dir is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)
            self.download_dir = None


def servable_family(name: str, what: str) -> Family:
    """The family ``name``, or TargetError if it has no serve endpoint."""
    try:
        return family_with(name, "endpoint", what)
    except LookupError as exc:
        raise TargetError(str(exc)) from exc


def checkpoint_settings(checkpoint: Path, description: str) -> tuple[Family, ServeSection]:
    """The checkpoint's family and its serve settings (``metadata.serve``, else the family's defaults)."""
    manifest = read_manifest(checkpoint)
    family = servable_family(manifest.family, description)
    try:
        return family, section_from(family.serve, manifest.metadata.get("serve"))
    except ValueError as exc:
        raise TargetError(f"{description}: {exc}") from exc


def resolve_target(target: str, experiment: Experiment | None, tracking_uri: str | None) -> Target:
    """See the module docstring; ``experiment`` is the loaded YAML when TARGET is one."""
    if experiment is not None:
        from orchestrator.trainer import RUN_ID_FILE, results_root

        family = servable_family(experiment.family, target)
        stored = results_root(experiment)
        if stored.local_path is None:  # an object store: the newest run's checkpoint, through MLflow
            runs = [run for run in stored.folders("train-") if run.exists(RUN_ID_FILE)]
            if not runs:
                raise TargetError(f"{target}: no train-* run under {stored}; run `moe-orch train {target}` first, "
                                  "or pass a run id")
            from orchestrator.tracking import Store

            store = Store.at(experiment.tracking.uri or tracking_uri)
            run_id = runs[-1].read_text(RUN_ID_FILE).strip()
            source = {"run_id": run_id, "tracking_uri": store.uri, "artifact_path": "checkpoint"}
            return _download_target(target, source, f"{target} -> {runs[-1]} (MLflow run {run_id})")
        base = stored.local_path
        runs = sorted(p for p in base.glob("train-*") if newest_checkpoint(p))
        if not runs:
            raise TargetError(f"{target}: no trained checkpoint under {base}/train-*/checkpoint_*; "
                              f"run `moe-orch train {target}` first (from this folder), or pass a run id or directory")
        ckpt = newest_checkpoint(runs[-1])
        assert ckpt is not None and experiment.serve is not None
        return Target({"checkpoint": str(ckpt)}, ckpt, family, experiment.serve, f"{target} -> {ckpt}")
    path = Path(target).expanduser()
    if path.is_dir():
        ckpt = find_checkpoint_dir(path.absolute())
        if ckpt is None:
            raise TargetError(f"{target}: not a checkpoint (no config.json manifest), Ray checkpoint (model/) "
                              "or train-* run folder")
        family, settings = checkpoint_settings(ckpt, target)
        return Target({"checkpoint": str(ckpt)}, ckpt, family, settings, str(ckpt))
    if RUN_ID_RE.match(target):
        from orchestrator.tracking import Store

        store = Store.at(tracking_uri)
        source = {"run_id": target, "tracking_uri": store.uri, "artifact_path": "checkpoint"}
        return _download_target(target, source, f"MLflow run {target} ({store.uri})")
    if target.startswith("models:/"):
        from orchestrator.tracking import Store

        store = Store.at(tracking_uri)
        try:
            version = store.model_version(target)
        except (LookupError, ValueError) as exc:
            raise TargetError(str(exc)) from exc
        source = {"run_id": version.run_id, "tracking_uri": store.uri, "artifact_path": version.artifact_path,
                  "version": version.version}
        return _download_target(target, source, f"{target} (version {version.version}, run {version.run_id})")
    raise TargetError(f"{target}: got neither an experiment YAML, an MLflow run id (32 hex digits), "
                      "a models:/<name>@<alias> URI nor a directory")


def _download_target(target: str, source: dict[str, Any], description: str) -> Target:
    """A Target for a checkpoint in an MLflow run's artifacts (``source``), downloaded here once."""
    from orchestrator.tracking import Store

    download = Path(tempfile.mkdtemp(prefix="moe-orch-serve-"))
    try:
        run = Store.at(source["tracking_uri"]).run(source["run_id"])
        local = find_checkpoint_dir(run.download(source["artifact_path"], download))
        if local is None:
            raise TargetError(f"{target}: the artifact {source['artifact_path']} has no config.json manifest")
        family, settings = checkpoint_settings(local, description)
    except Exception as exc:  # unknown run, no artifact, unreachable store, a family without a serve app
        shutil.rmtree(download, ignore_errors=True)
        if isinstance(exc, (TargetError, UnsafeCheckpointError)):
            raise
        raise TargetError(f"{target}: could not download {source['artifact_path']} of run {source['run_id']} "
                          f"from {source['tracking_uri']}: {exc}") from exc
    return Target(source, local, family, settings, description, download_dir=download,
                  version=source.get("version"))
