"""Plain LoRA merged into the frozen weights it adapts, for inference: the merged model computes the
same function (to float32 rounding) at the bare base's speed, with no LoRA kernels left to run.

``merge_lora(model)`` does for a model with peft LoRA *injected* (``peft.inject_adapter_in_model``, as
``trainables.mixlora.surgery.apply_lora`` puts it in; no ``PeftModel`` wrapper) what peft's
``merge_and_unload`` does for a ``PeftModel``: every LoRA layer's ``W += (alpha / r) · B A`` (peft's
``merge``), then the plain base layer put back in its place. Afterwards there is nothing to train
or save as an adapter: use it on inference paths only, and only on LoRA that every token runs through
(not on routed LoRA experts such as DyLoRA-MoE's, whose mixture differs per input).
"""

from __future__ import annotations

from peft.tuners.lora import LoraLayer
from torch import nn


def merge_lora(model: nn.Module) -> int:
    """Merge every peft LoRA layer of ``model`` into its base layer and unwrap it, in place.

    Returns:
        the number of layers merged (0 for a model without peft LoRA).
    """
    merged = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in merged:
        module.merge()  # W += scaling · B @ A, for every active adapter
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module.get_base_layer())
    return len(merged)
