"""The checkpoint manifest every family writes: ``config.json`` at the top of a checkpoint directory.

    {"family": "more",                 which family's loader rebuilds it
     "format_version": 1,              the family's layout version
     "config": {...},                  the model section (the family's config dataclass)
     "base": {...} | null,             for families built on a pretrained model: what to load it from
     "metadata": {...},                free-form: step, experiment, metrics, serve settings
     ...}                              family extras (e.g. the ensemble's experts and label names)

The weights beside it are safetensors (never pickles). ``orchestrator.checkpoints.load_checkpoint``
reads the manifest and dispatches to the family's loader. A directory that holds a pickle (by its
name, ``.pt`` / ``.pkl`` / ``.bin`` ..., or by its first bytes) is refused with
``UnsafeCheckpointError`` before anything in it is read: unpickling runs code, and a checkpoint
may come from anywhere (a run artifact, a download).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_FILE = "config.json"
_CORE = ("family", "format_version", "config", "base", "metadata")
_LEGACY = {"moe-orch/ensemble": "ensemble"}  # ensemble checkpoints written before the manifest: {"format", "version"}
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")  # torch.save / pickle / joblib
TEXT_SUFFIXES = (".safetensors", ".json", ".txt", ".md", ".jinja", ".model")  # never sniffed for pickle bytes


class UnsafeCheckpointError(ValueError):
    """A checkpoint directory holds a file that only unpickling could read."""


def _looks_pickled(path: Path) -> bool:
    """A pickle stream (protocol 2-5 header) or a zip with a pickle inside (``torch.save``'s format)."""
    with path.open("rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith(".pkl") for name in archive.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def pickled_files(directory: str | Path) -> list[Path]:
    """The files under ``directory`` that only unpickling could read, by suffix or by content."""
    found = []
    for path in sorted(Path(directory).rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES or (suffix not in TEXT_SUFFIXES and _looks_pickled(path)):
            found.append(path)
    return found


def refuse_pickles(directory: str | Path) -> None:
    """UnsafeCheckpointError if ``directory`` holds a pickle."""
    found = pickled_files(directory)
    if found:
        names = ", ".join(str(p.relative_to(directory)) for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise UnsafeCheckpointError(
            f"{directory}: refusing a checkpoint that holds pickled files ({names}); loading a pickle can run "
            "arbitrary code. moe-orch checkpoints are safetensors and JSON only: remove those files, or convert "
            "the weights to safetensors")


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
    """Whether ``directory`` holds a manifest (a ``config.json`` naming a family); an unsafe one raises
    ``UnsafeCheckpointError`` rather than passing as "not a checkpoint"."""
    try:
        read_manifest(directory)
        return True
    except UnsafeCheckpointError:
        raise
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

    FileNotFoundError if there is no ``config.json``; ValueError if it is not a moe-orch manifest;
    UnsafeCheckpointError if the directory holds a pickle.
    """
    path = Path(directory) / FORMAT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a moe-orch checkpoint (no {FORMAT_FILE})")
    refuse_pickles(directory)
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
