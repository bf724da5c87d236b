"""The optimizer and LR schedule every family trains with: AdamW over decay / no-decay groups,
linear warmup then ``train.lr_schedule``: cosine decay to ``min_lr_ratio`` of each group's base LR
(the default), or linear decay to 0 at ``max_steps`` (transformers' ``get_linear_schedule_with_warmup``,
the Ensemble MoE seed's schedule)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def lr_multiplier(step: int, warmup: int, max_steps: int, min_ratio: float, schedule: str = "cosine") -> float:
    """LambdaLR factor: a *multiplier* of each group's base LR (not an absolute LR).

    Linear warmup over ``warmup`` steps (``(step + 1) / warmup``), then, over the remaining steps,
    ``cosine``: from 1 down to ``min_ratio`` at ``max_steps``; ``linear``: from 1 down to 0 at
    ``max_steps`` (``min_ratio`` unused), as ``transformers.get_linear_schedule_with_warmup``.
    """
    if schedule not in ("cosine", "linear"):
        raise ValueError(f"schedule: got {schedule!r}, expected cosine or linear")
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    if schedule == "linear":
        return 1.0 - progress
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
