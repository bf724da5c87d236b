"""The optimizer and LR schedule every family trains with: AdamW over decay / no-decay groups,
linear warmup then cosine decay to ``min_lr_ratio`` of each group's base LR."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def lr_multiplier(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """LambdaLR factor: a *multiplier* of each group's base LR (not an absolute LR).

    Linear warmup over ``warmup`` steps, then cosine from 1 down to ``min_ratio`` at ``max_steps``.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def decay_groups(parts: Iterable[tuple[str, nn.Module, float]], weight_decay: float) -> list[dict]:
    """AdamW param groups: per named part ``(name, module, lr)``, its trainable matrices with
    ``weight_decay`` and its 1-D params (norms, biases) without; frozen params and empty groups
    are left out."""
    groups = []
    for name, module, lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        for decay in (True, False):
            chosen = [p for p in params if (p.dim() >= 2) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": lr, "weight_decay": weight_decay if decay else 0.0,
                               "name": f"{name}/{'decay' if decay else 'no_decay'}"})
    return groups


def build_optimizer(groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over ``groups`` (each may set its own ``lr``)."""
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
