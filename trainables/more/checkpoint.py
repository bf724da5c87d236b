"""Self-describing MoRE checkpoints.

A checkpoint directory holds everything needed to rebuild the model, and nothing
that needs unpickling:

    config.json         the manifest (trainables.training.manifest): {"family": "more",
                        "format_version": 1, "config": {...MoREConfig...}, "base": null,
                        "metadata": {...step, metrics...}, "num_parameters", "num_active_parameters"}
    model.safetensors   the weights (tied embeddings stored once)
    tokenizer.json      the tokenizer (see trainables.data.tokenizer)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from trainables.data import load_tokenizer
from trainables.more.config import MoREConfig
from trainables.more.model import MoRELM
from trainables.training.manifest import Manifest, read_manifest, write_manifest

FAMILY = "more"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"


def save_checkpoint(
    model: MoRELM, tokenizer: Any, directory: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write manifest, weights and tokenizer into ``directory`` (created if needed)."""
    directory = Path(directory)
    write_manifest(directory, Manifest(
        family=FAMILY, format_version=FORMAT_VERSION, config=model.cfg.to_dict(), metadata=metadata or {},
        extra={"num_parameters": model.num_parameters(), "num_active_parameters": model.num_active_parameters()}))
    save_model(model, str(directory / WEIGHTS_FILE))
    tokenizer.save(directory)
    return directory


def read_description(directory: str | Path) -> Manifest:
    """The manifest of a MoRE checkpoint; ValueError if the directory holds another family's."""
    manifest = read_manifest(directory)
    if manifest.family != FAMILY:
        raise ValueError(f"{directory}: family is {manifest.family!r}, expected {FAMILY!r}")
    return manifest


def load_model_from(directory: Path, manifest: Manifest, device: str = "cpu") -> MoRELM:
    """The family contract's loader: the ``MoRELM`` in ``directory`` (eval mode)."""
    model = MoRELM(MoREConfig.from_dict(manifest.config))
    load_model(model, str(Path(directory) / WEIGHTS_FILE), strict=True, device=device)  # raises on any mismatch
    return model.to(device).eval()


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[MoRELM, Any, dict[str, Any]]:
    """Rebuild ``(model, tokenizer, metadata)`` from a checkpoint directory alone (model in eval mode)."""
    manifest = read_description(directory)
    return load_model_from(Path(directory), manifest, device), load_tokenizer(directory), manifest.metadata
