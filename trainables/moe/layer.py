"""The MoE feed-forward layer: router + expert bank + optional shared expert."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from trainables.moe.dispatch import dispatch
from trainables.moe.experts import DenseFFN, ExpertBank
from trainables.moe.losses import RoutingStats, load_balance_loss, router_z_loss, routing_stats
from trainables.moe.router import TopKRouter


class MoEOutput(NamedTuple):
    """Everything one MoE layer call produces. Losses are unweighted: the caller
    multiplies them by its own coefficients (a named tuple so none is dropped silently)."""

    output: torch.Tensor  # (..., D), same shape as the input
    router_logits: torch.Tensor  # (T, E), T = number of tokens in the input
    load_balance_loss: torch.Tensor  # () Switch loss, 1.0 when perfectly balanced
    z_loss: torch.Tensor  # () router z-loss
    stats: RoutingStats  # detached tokens per expert, entropy, CV
    expert_indices: torch.Tensor  # (T, k) chosen experts, for routing plots


class MoELayer(nn.Module):
    """Top-k routed mixture of FFN experts, dropless unless a capacity factor is set.

    Args:
        d_model: D, token width.
        num_experts: E.
        top_k: k experts per token.
        expert_hidden: each expert's inner width.
        activation: "swiglu" or "gelu".
        shared_expert_hidden: if > 0, a dense FFN of this width that every token also
            passes through; its output is added to the routed output.
        capacity_factor: None for dropless dispatch; else each expert takes at most
            ``ceil(cf · T · k / E)`` assignments (see ``dispatch.py``).
        renormalize: rescale the k chosen weights to sum to 1.
        router_jitter: multiplicative input jitter of the router, training only.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int,
        expert_hidden: int,
        activation: str = "swiglu",
        shared_expert_hidden: int = 0,
        capacity_factor: float | None = None,
        renormalize: bool = True,
        router_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        self.router = TopKRouter(d_model, num_experts, top_k, renormalize, router_jitter)
        self.experts = ExpertBank(num_experts, d_model, expert_hidden, activation)
        self.shared_expert = DenseFFN(d_model, shared_expert_hidden, activation) if shared_expert_hidden > 0 else None
        self.capacity_factor = capacity_factor

    def inactive_parameters(self) -> int:
        """Expert parameters a single token does not touch: (E - k) experts."""
        return (self.experts.num_experts - self.router.top_k) * self.experts.params_per_expert()

    def forward(self, x: torch.Tensor) -> MoEOutput:
        """``x``: (..., D), e.g. (B, T, D); every leading position is a token."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, D)
        route = self.router(tokens)
        routed = dispatch(tokens, route.weights, route.indices, self.experts, self.capacity_factor)
        out = routed.output
        if self.shared_expert is not None:
            out = out + self.shared_expert(tokens)
        return MoEOutput(
            output=out.reshape(shape),
            router_logits=route.logits,
            load_balance_loss=load_balance_loss(route.probs, route.indices),
            z_loss=router_z_loss(route.logits),
            stats=routing_stats(route.probs, routed.tokens_per_expert),
            expert_indices=route.indices,
        )
