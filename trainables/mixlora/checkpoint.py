"""Self-describing MixLoRA / LoRA adapter directories (the base weights are never copied).

    config.json                 the manifest (trainables.training.manifest): {"family": "mixlora",
                                "format_version": 1, "config": MixLoRAConfig, "base": {name, GGUF
                                package/version/file or shape}, "metadata", "trainable_parameters"}
    adapter_config.json         peft's LoraConfig of the plain LoRA (attention for MixLoRA, all
    adapter_model.safetensors   seven projections for the LoRA baseline): loadable on the base with
                                ``peft.PeftModel.from_pretrained(base, directory)``
    mixlora.safetensors         MixLoRA only: every layer's router and expert LoRA banks
                                (``model.layers.{i}.mlp.{router.gate.weight, lora_gate.A, ...}``)

``load_adapter(directory)`` rebuilds the base (``trainables.lm.load_base``), applies the same
adapters and loads their weights: identical logits to the model that was saved. The inference paths
(serving through the family contract's ``load_model_from``, ``generate``, ``evaluate``) load with
``inference=True`` (``prepare_for_inference``): plain LoRA, the baseline's and MixLoRA's attention LoRA,
merged into the frozen weights, the same function to float32 rounding at the bare base's speed.
Training and resume (``recipe.py``: ``apply_adapters`` + ``load_weights``) keep them unmerged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.lm.base import ATTENTION_MODULES, MLP_MODULES, base_reference, load_base
from trainables.lm.merge import merge_lora
from trainables.mixlora.config import MixLoRAConfig
from trainables.mixlora.params import matched_lora_rank
from trainables.mixlora.surgery import apply_lora, apply_mixlora, freeze_base
from trainables.training.manifest import Manifest, read_manifest, write_manifest

FAMILY, FORMAT_VERSION = "mixlora", 1
PEFT_FILE, MIXLORA_FILE = "adapter_model.safetensors", "mixlora.safetensors"
PEFT_PREFIX = "base_model.model."  # how PeftModel names the wrapped model's parameters
ADAPTER = "default"  # peft's adapter name


def lora_rank_for(cfg: MixLoRAConfig, model_config: Any) -> int:
    """The rank of the plain-LoRA baseline: ``cfg.lora_rank``, else matched to MixLoRA's parameter count."""
    return cfg.lora_rank or matched_lora_rank(model_config, cfg)


def apply_adapters(model: nn.Module, cfg: MixLoRAConfig) -> nn.Module:
    """Freeze the base and add ``cfg.method``'s adapters, in place (same init for the same torch seed)."""
    if cfg.method == "mixlora":
        return apply_mixlora(model, cfg)
    freeze_base(model)
    return apply_lora(model, lora_rank_for(cfg, model.config), cfg.alpha, cfg.dropout,
                      ATTENTION_MODULES + MLP_MODULES)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _is_peft(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _is_mixlora(name: str) -> bool:
    return ".mlp.router." in name or ".mlp.lora_" in name


def save_adapter(model: nn.Module, cfg: MixLoRAConfig, directory: str | Path,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Write the manifest, the peft adapter and the MixLoRA weights of ``model`` into ``directory``.

    Tensors are cloned to contiguous CPU copies (DeepSpeed keeps parameters as views of flat buffers).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    copy = lambda t: t.detach().to("cpu").clone().contiguous()
    peft = {PEFT_PREFIX + n.replace(f".{ADAPTER}.", "."): copy(p) for n, p in params.items() if _is_peft(n)}
    save_file(peft, str(directory / PEFT_FILE))
    lora_config = model.peft_config[ADAPTER]
    lora_config.base_model_name_or_path = cfg.base
    lora_config.save_pretrained(str(directory))
    moe = {n: copy(p) for n, p in params.items() if _is_mixlora(n)}
    if moe:
        save_file(moe, str(directory / MIXLORA_FILE))
    write_manifest(directory, Manifest(
        family=FAMILY, format_version=FORMAT_VERSION, config=cfg.to_dict(), metadata=metadata or {},
        base=base_reference(cfg.base), extra={"trainable_parameters": trainable_parameters(model)}))
    return directory


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Load an adapter directory's LoRA and MixLoRA weights into an adapted ``model`` (strict on adapters)."""
    directory = Path(directory)
    state = {k.removeprefix(PEFT_PREFIX).replace(".lora_A.", f".lora_A.{ADAPTER}.")
             .replace(".lora_B.", f".lora_B.{ADAPTER}."): v for k, v in load_file(str(directory / PEFT_FILE)).items()}
    if (directory / MIXLORA_FILE).is_file():
        state.update(load_file(str(directory / MIXLORA_FILE)))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"{directory}: adapter weights do not match the model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """Make an adapted model an inference-only one, in place: its plain LoRA (all of the ``lora``
    baseline; MixLoRA's attention LoRA) merged into the frozen weights (``trainables.lm.merge``),
    every parameter frozen, eval mode. MixLoRA's routed FFN experts stay as they are (their mixture
    differs per token); served, they run ``MixLoRAFFN``'s loop-free path. The result can no longer be
    trained or saved as an adapter."""
    merge_lora(model)
    model.requires_grad_(False)
    return model.eval()


def load_adapter(directory: str | Path, manifest: Manifest | None = None,
                 dtype: torch.dtype = torch.float32, inference: bool = False) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)``: the base with the directory's adapters, eval mode; with ``inference``,
    prepared for inference only (``prepare_for_inference``: plain LoRA merged)."""
    manifest = manifest or read_manifest(directory)
    if manifest.family != FAMILY:
        raise ValueError(f"{directory}: family is {manifest.family!r}, expected {FAMILY!r}")
    cfg = MixLoRAConfig.from_dict(manifest.config)
    model, tokenizer = load_base(cfg.base, dtype=dtype)
    apply_adapters(model, cfg)
    load_weights(model, directory)
    if inference:
        prepare_for_inference(model)
    return model.eval(), tokenizer


def load_model_from(directory: Path, manifest: Manifest) -> nn.Module:
    """The family contract's loader, for serving (``trainables.lm.serving.load_lm``): the adapted model
    in ``directory``, prepared for inference (plain LoRA merged, eval mode)."""
    return load_adapter(directory, manifest, inference=True)[0]
