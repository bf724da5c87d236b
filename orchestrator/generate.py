"""``moe-orch generate``: a family's generator on a checkpoint (directory or MLflow run) or a pretrained base,
on the device ``--device`` resolves to (``orchestrator.devices``; ``auto``: CUDA when present)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from orchestrator.checkpoints import RUN_ID_RE, find_checkpoint_dir
from orchestrator.contract import import_ref
from orchestrator.devices import DeviceError, resolve_device
from orchestrator.registry import base_family, family_with
from orchestrator.tracking import Store
from trainables.training.manifest import UnsafeCheckpointError, read_manifest


class GenerateError(ValueError):
    """Bad input (exit 2): no checkpoint, an unknown run, a family without a generator."""


def generate_from(target: str, prompt: str, max_tokens: int, temperature: float, family_name: str | None,
                  tracking_uri: str | None, on_text: Callable[[str], None], weights: str = "fp32",
                  device: str = "auto") -> str:
    """Generate with TARGET's family, streaming each piece to ``on_text``; returns the completion.
    ``weights``: the inference weights (one of the family's ``weights``, e.g. ``int8``); ``device``: ``auto``,
    ``cpu`` or ``cuda`` (``resolve_device``; a family with cuda in ``devices`` gets the result as ``device=``)."""
    with tempfile.TemporaryDirectory(prefix="moe-orch-generate-") as tmp:
        checkpoint: Path | None = None
        try:
            if Path(target).exists():
                checkpoint = find_checkpoint_dir(target)
                if checkpoint is None:
                    raise GenerateError(f"{target}: not a checkpoint (no config.json manifest in it or in its model/)")
            elif RUN_ID_RE.match(target):
                checkpoint = find_checkpoint_dir(Store.at(tracking_uri).run(target).download("checkpoint", tmp))
                if checkpoint is None:
                    raise GenerateError(f"run {target} has no checkpoint artifact with a config.json manifest")
            if checkpoint is not None:
                family = family_with(read_manifest(checkpoint).family, "generator", target)
            else:
                family = base_family("generator", target, family_name)
        except (LookupError, UnsafeCheckpointError) as exc:
            raise GenerateError(str(exc)) from exc
        refused = family.weights_error(weights)
        if refused:
            raise GenerateError(refused)
        try:
            resolved = resolve_device(device, family, weights)
        except DeviceError as exc:
            raise GenerateError(str(exc)) from exc
        placement = {"device": resolved} if family.runs_on_cuda else {}  # other generators run on cpu only
        generate = import_ref(family.generator)
        return generate(checkpoint, None if checkpoint is not None else target, prompt, max_tokens, on_text,
                        temperature, weights=weights, **placement)
