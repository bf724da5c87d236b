"""Checkpoint directories of any family: finding them, and ``load_checkpoint(dir)``, which reads the
manifest (``trainables.training.manifest``) and dispatches to the family's loader.

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
