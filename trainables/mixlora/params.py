"""Trainable-parameter budgets: MixLoRA's count, plain LoRA's per rank, and the LoRA rank that matches
MixLoRA (the baseline of equal budget). Arithmetic on an HF decoder config, no model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainables.lm.base import ATTENTION_MODULES, MLP_MODULES

if TYPE_CHECKING:
    from trainables.mixlora.config import MixLoRALayerConfig



def _shapes(model_cfg: Any) -> tuple[int, int, int, int, int]:
    """``(layers, D, H, q width, kv width)`` of an HF decoder config."""
    d, h = model_cfg.hidden_size, model_cfg.intermediate_size
    heads = model_cfg.num_attention_heads
    kv_heads = getattr(model_cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(model_cfg, "head_dim", None) or d // heads
    return model_cfg.num_hidden_layers, d, h, heads * head_dim, kv_heads * head_dim


def lora_parameters_per_rank(model_cfg: Any, targets: tuple[str, ...]) -> int:
    """Trainable parameters of rank-1 LoRA on ``targets`` over all layers: Σ (in + out)."""
    layers, d, h, q, kv = _shapes(model_cfg)
    in_out = {
        "q_proj": (d, q),
        "k_proj": (d, kv),
        "v_proj": (d, kv),
        "o_proj": (q, d),
        "gate_proj": (d, h),
        "up_proj": (d, h),
        "down_proj": (h, d),
    }
    return layers * sum(sum(in_out[t]) for t in targets)


def mixlora_parameters(model_cfg: Any, cfg: MixLoRALayerConfig) -> int:
    """Trainable parameters of MixLoRA: E LoRA experts on gate/up/down + the router per
    layer, plus rank-r LoRA on q/k/v/o if ``cfg.attention_lora``."""
    layers, d, *_ = _shapes(model_cfg)
    count = cfg.num_experts * cfg.rank * lora_parameters_per_rank(model_cfg, MLP_MODULES)
    count += layers * d * cfg.num_experts  # routers
    if cfg.attention_lora:
        count += cfg.rank * lora_parameters_per_rank(model_cfg, ATTENTION_MODULES)
    return count


def matched_lora_rank(model_cfg: Any, mixlora_cfg: MixLoRALayerConfig) -> int:
    """The rank R of plain LoRA on all seven projections whose trainable-parameter count
    is closest to MixLoRA's (``mixlora_parameters``); within 10 % once R >= 5.

    Example: SmolLM2-135M with E = 8, r = 8 and attention LoRA: 440,832 parameters per
    layer, R = 43 (437,568, 0.7 % fewer).
    """
    target = mixlora_parameters(model_cfg, mixlora_cfg)
    per_rank = lora_parameters_per_rank(model_cfg, ATTENTION_MODULES + MLP_MODULES)
    return max(1, round(target / per_rank))
