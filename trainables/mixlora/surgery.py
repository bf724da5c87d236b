"""Model surgery: MixLoRA and plain LoRA put into a pretrained Llama-style causal LM, in place.

``apply_mixlora`` swaps every decoder layer's ``mlp`` for a ``MixLoRAMLP`` (``block.py``) that shares
the frozen base weights, and freezes the base; ``apply_attention_lora`` / ``apply_lora`` put plain peft
LoRA on q/k/v/o_proj (or any named projections). ``mixlora_blocks`` and ``router_outputs`` find the
blocks of such a model and read their routing after a forward (the training loop's auxiliary losses).
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from trainables.lm.base import ATTENTION_MODULES, check_architecture, decoder_layers
from trainables.mixlora.block import MixLoRAFFN, MixLoRAMLP
from trainables.mixlora.config import MixLoRALayerConfig
from trainables.moe.layer import MoEOutput


def _is_adapter_parameter(name: str) -> bool:
    """LoRA (peft's and ours) and MixLoRA router parameters: the trainable ones."""
    return "lora_" in name or ".router." in name or name.startswith("router.")


def freeze_base(model: nn.Module) -> None:
    """``requires_grad=False`` on every parameter that is not an adapter or router parameter."""
    for name, param in model.named_parameters():
        if not _is_adapter_parameter(name):
            param.requires_grad_(False)


def apply_mixlora(model: nn.Module, cfg: MixLoRALayerConfig | None = None) -> nn.Module:
    """Turn a Llama-style causal LM into a MixLoRA model, in place.

    Every decoder layer's ``mlp`` becomes a ``MixLoRAMLP`` sharing the frozen base
    weights; if ``cfg.attention_lora``, q/k/v/o_proj get plain LoRA (``apply_attention_lora``).
    Everything but LoRA and router parameters is frozen.

    Returns:
        the same model object.
    """
    cfg = cfg or MixLoRALayerConfig()
    check_architecture(model)
    for layer in decoder_layers(model):  # type: ignore[union-attr]
        if not isinstance(layer.mlp, MixLoRAFFN):
            layer.mlp = MixLoRAMLP.from_mlp(layer.mlp, cfg)
    freeze_base(model)
    if cfg.attention_lora:
        apply_attention_lora(model, cfg.rank, cfg.alpha, cfg.dropout)
    return model


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    targets: tuple[str, ...] = ATTENTION_MODULES,
) -> nn.Module:
    """Plain peft LoRA on the named projections, in place (``peft.inject_adapter_in_model``).

    The targeted base weights are frozen; every other parameter keeps its
    ``requires_grad`` (peft alone would freeze everything but its own adapters).
    """
    before = {id(p): p.requires_grad for p in model.parameters()}
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        if ".base_layer." in name:
            param.requires_grad_(False)
        elif id(param) in before:
            param.requires_grad_(before[id(param)])
    return model


def apply_attention_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.05) -> nn.Module:
    """Plain LoRA (rank, alpha, dropout) on q_proj, k_proj, v_proj and o_proj, in place."""
    return apply_lora(model, rank, alpha, dropout, ATTENTION_MODULES)


def mixlora_blocks(model: nn.Module) -> list[MixLoRAFFN]:
    """The MixLoRA blocks of a model, in layer order."""
    return [m for m in model.modules() if isinstance(m, MixLoRAFFN)]


def router_outputs(model: nn.Module, clear: bool = True) -> list[MoEOutput]:
    """The ``MoEOutput`` of each ``MixLoRAMLP`` from the latest forward, in layer order.

    ``clear`` drops the blocks' references, so the graph is not kept alive past the step.
    """
    outs = []
    for block in mixlora_blocks(model):
        if isinstance(block, MixLoRAMLP) and block.last is not None:
            outs.append(block.last)
            if clear:
                block.last = None
    return outs
