"""MixLoRA: top-k routed LoRA experts inside the frozen FFN of a causal LM (see layer.py)."""

from trainables.mixlora.layer import (
    LoRABank,
    MixLoRAFFN,
    MixLoRALayerConfig,
    MixLoRAMLP,
    MixLoRANaive,
    MixLoRASettings,
    apply_attention_lora,
    apply_lora,
    apply_mixlora,
    freeze_base,
    lora_parameters_per_rank,
    matched_lora_rank,
    mixlora_blocks,
    mixlora_parameters,
    router_outputs,
)

__all__ = [
    "LoRABank",
    "MixLoRAFFN",
    "MixLoRALayerConfig",
    "MixLoRAMLP",
    "MixLoRANaive",
    "MixLoRASettings",
    "apply_attention_lora",
    "apply_lora",
    "apply_mixlora",
    "freeze_base",
    "lora_parameters_per_rank",
    "matched_lora_rank",
    "mixlora_blocks",
    "mixlora_parameters",
    "router_outputs",
]
