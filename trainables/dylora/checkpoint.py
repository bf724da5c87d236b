"""Self-describing DyLoRA-MoE pool directories (the base weights are never copied).

    config.json           the manifest (trainables.training.manifest): {"family": "dylora",
                          "format_version": 1, "config": DyLoRAConfig, "base": {...}, "metadata": {...},
                          "pool": {"experts": [{slot, birth_step, frozen_step, mature_step}], "losses": [...]},
                          "detector": NoveltyDetector.state_dict()}
    experts.safetensors   the active slots' LoRA weights (``...lora_A.{slot}``, ``...lora_B.{slot}``)
                          and the router's buffers (``router.prototypes`` ...)

The whole pool travels: experts, router, detector state, and (in ``metadata``) the position in the
stream, the accuracy rows measured so far and the lifecycle events. ``load_pool(directory)``
rebuilds the base, the pool and its weights: identical logits to the model that was saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.dylora.config import DyLoRAConfig
from trainables.dylora.experts import DyLoRAModel, ExpertManager
from trainables.dylora.novelty import NoveltyDetector
from trainables.lm.base import base_reference, load_base
from trainables.training.manifest import Manifest, read_manifest, write_manifest

FAMILY, FORMAT_VERSION = "dylora", 1
WEIGHTS = "experts.safetensors"


def _pool_tensors(model: DyLoRAModel, active: int) -> dict[str, torch.Tensor]:
    """The active slots' LoRA weights and the router buffers, as contiguous CPU copies."""
    out = {}
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:
            if int(name.rsplit(".", 1)[1]) < active:
                out[name] = p.detach().to("cpu").clone().contiguous()
    for name, b in model.router.named_buffers():
        out[f"router.{name}"] = b.detach().to("cpu").clone().contiguous()
    return out


def save_pool(model: DyLoRAModel, manager: ExpertManager, detector: NoveltyDetector | None, cfg: DyLoRAConfig,
              directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the manifest and the pool's weights into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(_pool_tensors(model, manager.num_active), str(directory / WEIGHTS))
    extra = {"pool": manager.state_dict(), "detector": detector.state_dict() if detector is not None else None,
             "num_experts": manager.num_active}
    write_manifest(directory, Manifest(family=FAMILY, format_version=FORMAT_VERSION, config=cfg.to_dict(),
                                       metadata=metadata or {}, base=base_reference(cfg.base), extra=extra))
    return directory


def restore_pool(model: DyLoRAModel, manager: ExpertManager, detector: NoveltyDetector | None,
                 directory: str | Path, manifest: Manifest | None = None) -> None:
    """Load a pool directory's weights and lifecycle state into a freshly built ``model`` / ``manager``."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    manager.load_state_dict(manifest.extra["pool"])
    if detector is not None and manifest.extra.get("detector") is not None:
        detector.load_state_dict(manifest.extra["detector"])
    state = load_file(str(directory / WEIGHTS))
    params = dict(model.named_parameters())
    buffers = {f"router.{n}": b for n, b in model.router.named_buffers()}
    unknown = sorted(set(state) - set(params) - set(buffers))
    if unknown:
        raise ValueError(f"{directory}: weights do not match the model: unexpected {unknown[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            (params.get(name) if name in params else buffers[name]).copy_(value)
    if int(model.router.active) != manager.num_active:
        raise ValueError(f"{directory}: router has {int(model.router.active)} active experts, "
                         f"the pool {manager.num_active}")


def load_pool(directory: str | Path, manifest: Manifest | None = None,
              dtype: torch.dtype = torch.float32) -> tuple[DyLoRAModel, Any, Manifest]:
    """``(model, tokenizer, manifest)``: the base with the directory's pool, eval mode."""
    manifest = manifest or read_manifest(directory)
    if manifest.family != FAMILY:
        raise ValueError(f"{directory}: family is {manifest.family!r}, expected {FAMILY!r}")
    cfg = DyLoRAConfig.from_dict(manifest.config)
    base, tokenizer = load_base(cfg.base, dtype=dtype)
    model = DyLoRAModel(base, cfg)
    model.set_template(tokenizer)
    restore_pool(model, ExpertManager(model, cfg), None, directory, manifest)
    return model.eval(), tokenizer, manifest


def load_model_from(directory: Path, manifest: Manifest) -> nn.Module:
    """The family contract's loader: the pooled model in ``directory`` (eval mode)."""
    return load_pool(directory, manifest)[0]
