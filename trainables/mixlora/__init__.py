"""MixLoRA: top-k routed LoRA experts inside the frozen FFN of a causal LM.

``block.py``: the MixLoRA FFN block and its LoRA banks; ``surgery.py``: putting the blocks (and plain
LoRA on attention) into a pretrained model; ``params.py``: trainable-parameter budgets and the matched
LoRA rank.
"""

from trainables.mixlora.block import LoRABank, MixLoRAFFN, MixLoRAMLP
from trainables.mixlora.config import MixLoRALayerConfig
from trainables.mixlora.params import lora_parameters_per_rank, matched_lora_rank, mixlora_parameters
from trainables.mixlora.surgery import (
    apply_attention_lora,
    apply_lora,
    apply_mixlora,
    freeze_base,
    mixlora_blocks,
    router_outputs,
)

__all__ = [
    "LoRABank",
    "MixLoRAFFN",
    "MixLoRALayerConfig",
    "MixLoRAMLP",
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
