"""What ``moe-orch serve TARGET`` serves: an experiment's newest checkpoint, an MLflow run, or a directory.

``resolve_target`` turns TARGET into a ``Target``: the checkpoint ``source`` handed to the
Serve deployment, a local copy of the checkpoint and the ``serve:`` settings to use
(experiment file > checkpoint metadata > defaults).

- an experiment YAML: the newest ``ray_results/<name>/train-*/checkpoint_*/model`` written by
  ``moe-orch train`` (run from the same folder);
- an MLflow run id (32 hex digits): the run's ``checkpoint`` artifact, downloaded once here;
  Serve config files keep ``{run_id, tracking_uri}`` so each replica downloads it itself;
- a directory: a checkpoint (``config.json``), a Ray checkpoint (``model/config.json``), or a
  ``train-*`` run folder (its newest checkpoint).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config import Experiment, ServeSection

RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


class TargetError(ValueError):
    """TARGET names nothing servable; the message says what was looked for."""


@dataclass
class Target:
    source: dict[str, Any]  # for the deployment: {"checkpoint": dir} or {"run_id", "tracking_uri"}
    local_dir: Path  # the checkpoint, readable here
    settings: ServeSection
    description: str
    download_dir: Path | None = None  # a temporary folder holding a downloaded run's checkpoint

    def cleanup(self) -> None:
        """Delete the temporary download, if any (call once the app that reads ``local_dir`` has stopped)."""
        if self.download_dir is not None:
            shutil.rmtree(self.download_dir, ignore_errors=True)
            self.download_dir = None


def newest_checkpoint(folder: Path) -> Path | None:
    """The ``model/`` of the newest ``checkpoint_*`` under ``folder`` (a ``train-*`` run), if any."""
    found = sorted(folder.glob("checkpoint_*/model/config.json"))
    return found[-1].parent if found else None


def checkpoint_in(folder: Path) -> Path | None:
    """The checkpoint directory that ``folder`` is, contains, or (as a run folder) last wrote."""
    if (folder / "config.json").is_file() and (folder / "gate.safetensors").is_file():
        return folder
    if (folder / "model" / "config.json").is_file():
        return folder / "model"
    return newest_checkpoint(folder)


def settings_for(checkpoint: Path, base: ServeSection | None) -> ServeSection:
    """``base`` if given (an experiment's section), else the checkpoint's ``metadata.serve``, else defaults."""
    if base is not None:
        return base
    from serve.ensemble import settings_from
    from trainables.ensemble.checkpoint import read_checkpoint_config

    return settings_from(read_checkpoint_config(checkpoint).get("metadata", {}).get("serve"))


def resolve_target(target: str, experiment: Experiment | None, tracking_uri: str,
                   results: str | Path = "ray_results") -> Target:
    """See the module docstring; ``experiment`` is the loaded YAML when TARGET is one."""
    if experiment is not None:
        base = Path(results).absolute() / experiment.name
        runs = sorted(p for p in base.glob("train-*") if newest_checkpoint(p))
        if not runs:
            raise TargetError(f"{target}: no trained checkpoint under {base}/train-*/checkpoint_*; "
                              f"run `moe-orch train {target}` first (from this folder), or pass a run id or directory")
        ckpt = newest_checkpoint(runs[-1])
        assert ckpt is not None
        return Target({"checkpoint": str(ckpt)}, ckpt, experiment.serve, f"{target} -> {ckpt}")
    path = Path(target).expanduser()
    if path.is_dir():
        ckpt = checkpoint_in(path.absolute())
        if ckpt is None:
            raise TargetError(f"{target}: not an Ensemble MoE checkpoint (no config.json + gate.safetensors), "
                              "Ray checkpoint (model/) or train-* run folder")
        return Target({"checkpoint": str(ckpt)}, ckpt, settings_for(ckpt, None), str(ckpt))
    if RUN_ID_RE.match(target):
        from orchestrator import tracking

        uri = tracking.resolve_uri(tracking_uri)
        download = Path(tempfile.mkdtemp(prefix="moe-orch-serve-"))
        try:
            local = tracking.download_artifacts(uri, target, "checkpoint", download)
        except Exception as exc:  # unknown run, no artifact, unreachable store
            shutil.rmtree(download, ignore_errors=True)
            raise TargetError(f"{target}: could not download the run's checkpoint artifact from {uri}: {exc}") from exc
        return Target({"run_id": target, "tracking_uri": uri}, local, settings_for(local, None),
                      f"MLflow run {target} ({uri})", download_dir=download)
    raise TargetError(f"{target}: got neither an experiment YAML, an MLflow run id (32 hex digits) nor a directory")
