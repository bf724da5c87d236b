"""The checkpoint manifest every family writes: ``config.json`` at the top of a checkpoint directory.

    {"family": "more",                 which family's loader rebuilds it
     "format_version": 1,              the family's layout version
     "config": {...},                  the model section (the family's config dataclass)
     "base": {...} | null,             for families built on a pretrained model: what to load it from
     "metadata": {...},                free-form: step, experiment, metrics, serve settings
     ...}                              family extras (e.g. the ensemble's experts and label names)

The weights beside it are safetensors (never pickles). ``orchestrator.checkpoints.load_checkpoint``
reads the manifest and dispatches to the family's loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_FILE = "config.json"
_CORE = ("family", "format_version", "config", "base", "metadata")
_LEGACY = {"moe-orch/ensemble": "ensemble"}  # ensemble checkpoints written before the manifest: {"format", "version"}


@dataclass
class Manifest:
    """A parsed ``config.json``."""

    family: str
    format_version: int
    config: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    base: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific keys

    def to_json(self) -> dict[str, Any]:
        return {"family": self.family, "format_version": self.format_version, "config": self.config,
                "base": self.base, "metadata": self.metadata, **self.extra}


def is_checkpoint(directory: str | Path) -> bool:
    """Whether ``directory`` holds a manifest (a ``config.json`` naming a family)."""
    try:
        read_manifest(directory)
        return True
    except (OSError, ValueError):
        return False


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    """Write ``config.json`` into ``directory`` (created); returns its path."""
    path = Path(directory) / FORMAT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest.to_json(), indent=2, default=str))
    return path


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of the checkpoint in ``directory``.

    FileNotFoundError if there is no ``config.json``; ValueError if it is not a moe-orch manifest.
    """
    path = Path(directory) / FORMAT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a moe-orch checkpoint (no {FORMAT_FILE})")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a moe-orch manifest (invalid JSON: {exc})") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a moe-orch manifest (expected a JSON object)")
    if doc.get("format") in _LEGACY and "family" not in doc:
        legacy = doc
        doc = {k: v for k, v in legacy.items() if k not in ("format", "version")}
        doc.update(family=_LEGACY[legacy["format"]], format_version=legacy.get("version", 1))
    if not isinstance(doc.get("family"), str) or not isinstance(doc.get("config"), dict):
        raise ValueError(f"{path}: not a moe-orch manifest (expected 'family' and 'config'; a Hugging Face "
                         "config.json is not a checkpoint of ours)")
    return Manifest(family=doc["family"], format_version=int(doc.get("format_version", 1)), config=doc["config"],
                    metadata=doc.get("metadata") or {}, base=doc.get("base"),
                    extra={k: v for k, v in doc.items() if k not in _CORE})
