"""Self-describing MoRE checkpoints.

A checkpoint directory holds everything needed to rebuild the model, and nothing
that needs unpickling:

    config.json         {"family": "more", "format_version": 1, "config": {...MoREConfig...},
                         "metadata": {...free-form: step, metrics...}}
    model.safetensors   the weights (tied embeddings stored once)
    tokenizer.json      the tokenizer (see trainables.data.tokenizer)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from trainables.data import load_tokenizer
from trainables.more.config import MoREConfig
from trainables.more.model import MoRELM

FAMILY = "more"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_checkpoint(
    model: MoRELM, tokenizer: Any, directory: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write config, weights and tokenizer into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    description = {
        "family": FAMILY,
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "num_parameters": model.num_parameters(),
        "num_active_parameters": model.num_active_parameters(),
        "metadata": metadata or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(description, indent=2))
    save_model(model, str(directory / WEIGHTS_FILE))
    tokenizer.save(directory)
    return directory


def read_description(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint, with a clear error if it is not one."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a moe-orch checkpoint (no {CONFIG_FILE})")
    description = json.loads(path.read_text())
    if description.get("family") != FAMILY:
        raise ValueError(f"{path}: family is {description.get('family')!r}, expected {FAMILY!r}")
    return description


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[MoRELM, Any, dict[str, Any]]:
    """Rebuild ``(model, tokenizer, metadata)`` from a checkpoint directory alone.

    The model comes back in eval mode on ``device``.
    """
    description = read_description(directory)
    model = MoRELM(MoREConfig.from_dict(description["config"]))
    load_model(model, str(Path(directory) / WEIGHTS_FILE), strict=True, device=device)  # raises on any mismatch
    model.to(device).eval()
    return model, load_tokenizer(directory), description.get("metadata", {})
