"""Router auxiliary losses and routing statistics (all unweighted).

Conventions, for T tokens routed top-k over E experts:

- ``f_i``: the fraction of the T·k assignments that went to expert i (sums to 1).
- ``P_i``: the mean router probability of expert i over the T tokens (sums to 1).
- Switch load-balance loss: ``E · Σ_i f_i · P_i``. It is 1 for perfectly uniform
  routing and grows to E when one expert takes everything. (Normalising f by T·k
  rather than T keeps the value comparable across top-k.) Gradients flow through P.
- Router z-loss (ST-MoE): ``mean_t logsumexp(logits_t)²``.
- Router entropy: the mean over tokens of the entropy of the router's full softmax,
  divided by log E, so 1 means uniform and 0 means one-hot; defined as 0 when E = 1.
- Load-balance CV: population std / mean of tokens per expert (0 = perfect balance).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class RoutingStats(NamedTuple):
    """Detached routing statistics of one MoE layer call."""

    tokens_per_expert: torch.Tensor  # (E,) float, assignments per expert
    router_entropy: torch.Tensor  # () float in [0, 1]
    load_balance_cv: torch.Tensor  # () float >= 0


def load_balance_loss(probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Switch load-balance loss ``E · Σ f_i P_i``; probs (T, E), indices (T, k)."""
    num_experts = probs.shape[-1]
    counts = torch.bincount(indices.reshape(-1), minlength=num_experts).to(probs.dtype)  # (E,)
    f = counts / indices.numel()
    p = probs.mean(dim=0)  # (E,)
    return num_experts * torch.sum(f * p)


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE z-loss ``mean(logsumexp(logits)²)``; logits (T, E)."""
    return torch.logsumexp(logits.float(), dim=-1).square().mean()


@torch.no_grad()
def router_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the router softmax's entropy / log E, in [0, 1] (0 when E = 1); probs (T, E)."""
    num_experts = probs.shape[-1]
    if num_experts == 1:
        return probs.new_zeros(())
    return -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean() / math.log(num_experts)


@torch.no_grad()
def load_balance_cv(counts: torch.Tensor) -> torch.Tensor:
    """Population std / mean of assignments per expert (0 = balanced, or nothing routed); counts (..., E)."""
    counts = counts.float()
    mean = counts.mean(-1)
    return torch.where(mean > 0, counts.std(-1, unbiased=False) / mean.clamp_min(1e-12), torch.zeros_like(mean))


@torch.no_grad()
def routing_stats(probs: torch.Tensor, tokens_per_expert: torch.Tensor) -> RoutingStats:
    """Stats of one routing decision; probs (T, E), tokens_per_expert (E,)."""
    counts = tokens_per_expert.float()
    return RoutingStats(counts, router_entropy(probs), load_balance_cv(counts))
