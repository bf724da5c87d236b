"""Checkpoint directories of any family: finding them, resolving a command's TARGET (a path or an
MLflow run id, ``resolve_checkpoint``), and ``load_checkpoint(dir)``, which reads the manifest
(``trainables.training.manifest``) and dispatches to the family's loader.

Checkpoints never need unpickling: weights are safetensors, configs JSON. A ``.pt`` training
state (optimizer, scheduler) is loaded ``weights_only`` by the training loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.contract import Family, import_ref
from orchestrator.registry import get_family
from trainables.training.manifest import Manifest, is_checkpoint, read_manifest

RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from its directory alone."""

    family: Family
    manifest: Manifest
    model: Any  # the family's model, eval mode, CPU
    directory: Path


def newest_checkpoint(folder: Path) -> Path | None:
    """The ``model/`` of the newest ``checkpoint_*`` under ``folder`` (a Ray Train run folder), if any."""
    found = sorted(p.parent for p in folder.glob("checkpoint_*/model/config.json") if is_checkpoint(p.parent))
    return found[-1] if found else None


def find_checkpoint_dir(path: str | Path) -> Path | None:
    """The checkpoint that ``path`` is, holds in ``model/`` (a Ray checkpoint), or last wrote (a run folder)."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if is_checkpoint(candidate):
            return candidate
    return newest_checkpoint(path) if path.is_dir() else None


def resolve_checkpoint(target: str, tracking_uri: str | None, download_dir: str | Path) -> Path | None:
    """The checkpoint that a command's TARGET names: an existing path (see ``find_checkpoint_dir``), or an
    MLflow run id (32 hex digits; its ``checkpoint`` artifact, downloaded into ``download_dir``). None when
    TARGET is neither (a pretrained base name, for the commands that take one). LookupError, saying what
    was looked for, when TARGET is a path or a run without a checkpoint, or an unknown run;
    ``UnsafeCheckpointError`` when the checkpoint holds a pickle."""
    if Path(target).exists():
        found = find_checkpoint_dir(target)
        if found is None:
            raise LookupError(f"{target}: not a checkpoint (no config.json manifest in it or in {target}/model)")
        return found
    if not RUN_ID_RE.match(target):
        return None
    from orchestrator.tracking import Store  # mlflow: only for a run id

    run = Store.at(tracking_uri).run(target)
    try:
        downloaded = run.download("checkpoint", download_dir)
    except Exception as exc:  # mlflow's MlflowException: no such artifact (only orchestrator.tracking imports mlflow)
        raise LookupError(f"run {target} has no checkpoint artifact ({type(exc).__name__}: {exc})") from exc
    found = find_checkpoint_dir(downloaded)  # UnsafeCheckpointError if it holds a pickle
    if found is None:
        raise LookupError(f"run {target} has no checkpoint artifact with a config.json manifest")
    return found


def load_checkpoint(directory: str | Path) -> LoadedCheckpoint:
    """Rebuild the model in ``directory`` with its family's loader (the manifest names the family).

    FileNotFoundError if there is no checkpoint; KeyError if its family is not registered.
    """
    found = find_checkpoint_dir(directory)
    if found is None:
        raise FileNotFoundError(f"{directory}: not a checkpoint (no config.json manifest in it or in its model/)")
    manifest = read_manifest(found)
    family = get_family(manifest.family)
    model = import_ref(family.checkpoint)(found, manifest)
    return LoadedCheckpoint(family, manifest, model, found)
