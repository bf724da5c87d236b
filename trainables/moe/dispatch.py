"""Token dispatch: group (token, expert) assignments by expert, run each expert once
over its contiguous slice, and scatter the weighted results back.

Dropless by default: every one of the T·k assignments is computed. The cost beyond
the expert matmuls is one stable argsort of T·k expert ids, one gather of T·k rows,
one ``bincount`` and one ``index_add_``; nothing builds an (E, T) mask.

With a capacity factor ``cf``, each expert takes at most ``C = ceil(cf · T · k / E)``
assignments. Priority is by token order (the stable sort keeps earlier tokens
first); an assignment past capacity is dropped, i.e. contributes zero, so a token
whose every assignment is dropped leaves the layer as zeros and only the block's
residual connection carries it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from trainables.moe.experts import ExpertBank


class DispatchResult(NamedTuple):
    output: torch.Tensor  # (T, D) weighted sum of the chosen experts' outputs
    tokens_per_expert: torch.Tensor  # (E,) assignments routed to each expert, before dropping
    dropped: int  # assignments dropped for capacity (0 when dropless)


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """``C = ceil(cf · T · k / E)``: the most assignments one expert accepts."""
    return math.ceil(capacity_factor * num_tokens * top_k / num_experts)


def dispatch(
    x: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
    experts: ExpertBank,
    capacity_factor: float | None = None,
) -> DispatchResult:
    """Compute ``sum_j weights[t, j] * expert[indices[t, j]](x[t])`` for every token.

    Args:
        x: (T, D) tokens.
        weights: (T, k) mixing weights from the router.
        indices: (T, k) expert ids from the router.
        experts: the bank holding E experts.
        capacity_factor: None for dropless; else the ``cf`` of the module docstring.
    """
    num_tokens, top_k = indices.shape
    num_experts = experts.num_experts
    flat_experts = indices.reshape(-1)  # (T·k,)
    order = torch.argsort(flat_experts, stable=True)  # (T·k,) assignments grouped by expert
    tokens_per_expert = torch.bincount(flat_experts, minlength=num_experts)  # (E,)
    sorted_experts = flat_experts[order]  # (T·k,) non-decreasing
    token_ids = order // top_k  # (T·k,) which token each sorted assignment belongs to
    sorted_weights = weights.reshape(-1)[order]  # (T·k,)

    counts = tokens_per_expert
    dropped = 0
    if capacity_factor is not None:
        capacity = expert_capacity(num_tokens, num_experts, top_k, capacity_factor)
        starts = torch.cumsum(tokens_per_expert, 0) - tokens_per_expert  # (E,) first slot per expert
        rank_in_expert = torch.arange(order.numel(), device=x.device) - starts[sorted_experts]
        keep = rank_in_expert < capacity  # (T·k,)
        token_ids, sorted_weights = token_ids[keep], sorted_weights[keep]
        counts = tokens_per_expert.clamp(max=capacity)
        dropped = int(order.numel() - token_ids.numel())

    routed = x.index_select(0, token_ids)  # (N, D), N = kept assignments, grouped by expert
    expert_out = experts(routed, counts.tolist()) if routed.shape[0] > 0 else routed  # (N, D)
    expert_out = expert_out * sorted_weights.unsqueeze(-1)
    output = torch.zeros_like(x).index_add_(0, token_ids, expert_out)  # (T, D)
    return DispatchResult(output, tokens_per_expert, dropped)
