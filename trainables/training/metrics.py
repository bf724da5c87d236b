"""Validation numbers every recipe reports the same way: sums over the DDP ranks, mean loss, perplexity.

- ``all_reduce_sum``: a tensor summed over every rank (unchanged without a process group);
- ``global_mean``: ``sum of totals / sum of counts`` over every rank (e.g. summed token losses and
  token counts, or summed batch losses and batch counts);
- ``perplexity_of``: ``exp(mean loss)``, capped at ``exp(MAX_LOG_PERPLEXITY)`` so it stays finite;
- ``validation_metrics``: ``{"val_loss", "val_perplexity"}`` from one rank's totals.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

MAX_LOG_PERPLEXITY = 50.0  # exp(50) ~ 5e21: a diverged run still reports a finite number


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank, in place; returned for chaining (as is without a process group)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def global_mean(total: float, count: float, device: torch.device | None = None) -> float:
    """``sum(total) / sum(count)`` over every rank (0 when nothing was counted); ``device``: where the
    collective runs (the worker's device: NCCL reduces CUDA tensors only)."""
    totals = all_reduce_sum(torch.tensor([float(total), float(count)], device=device))  # (2,)
    return (totals[0] / totals[1].clamp_min(1)).item()


def perplexity_of(loss: float) -> float:
    """``exp(loss)`` of a mean negative log-likelihood, capped at ``exp(MAX_LOG_PERPLEXITY)``."""
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))


def validation_metrics(total: float, count: float, device: torch.device | None = None) -> dict[str, float]:
    """``{"val_loss": global_mean(total, count), "val_perplexity": its perplexity}`` (a collective: every
    rank calls it)."""
    val_loss = global_mean(total, count, device)
    return {"val_loss": val_loss, "val_perplexity": perplexity_of(val_loss)}
