"""Top-k softmax router: a linear gate that picks k experts per token."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class RouterOutput(NamedTuple):
    """What the router decided for a flat batch of T tokens routed over E experts."""

    logits: torch.Tensor  # (T, E) raw gate logits, before softmax
    probs: torch.Tensor  # (T, E) softmax over all experts, float32
    weights: torch.Tensor  # (T, k) mixing weight of each chosen expert
    indices: torch.Tensor  # (T, k) chosen expert ids, int64


class TopKRouter(nn.Module):
    """A bias-free linear gate followed by softmax and top-k.

    Args:
        d_model: width of the tokens being routed.
        num_experts: E, the number of experts to choose among.
        top_k: k, experts chosen per token (1 <= k <= E).
        renormalize: if True, the k chosen weights are rescaled to sum to 1
            (Mixtral); if False they keep their full-softmax values (Switch).
        jitter: multiplicative input noise eps (Switch Transformer): in training
            only, the gate sees ``x * U(1 - eps, 1 + eps)``. 0 turns it off.
    """

    def __init__(
        self,
        d_model: int,
        num_experts: int,
        top_k: int,
        renormalize: bool = True,
        jitter: float = 0.0,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k: got {top_k}, expected 1 <= top_k <= num_experts ({num_experts})")
        self.num_experts = num_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.jitter = jitter
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> RouterOutput:
        """Route ``x`` of shape (T, D)."""
        if self.training and self.jitter > 0:
            noise = torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            x = x * noise
        logits = self.gate(x)  # (T, E)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)  # (T, E)
        weights, indices = torch.topk(probs, self.top_k, dim=-1)  # (T, k), (T, k)
        if self.renormalize and self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return RouterOutput(logits, probs, weights.to(x.dtype), indices)

    def choose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``forward``'s logits, weights and indices of ``x`` (T, D), to float32 rounding, without the full
        softmax over E (inference: a decode step that reads no routing stats; no jitter): the top k of the
        logits, their weights softmaxed over the k (``renormalize``, k > 1) or each its full-softmax value.
        Returns (T, E), (T, k), (T, k)."""
        logits = F.linear(x, self.gate.weight)  # (T, E)
        top, indices = logits.topk(self.top_k, dim=-1)  # (T, k): softmax keeps the logits' order
        if self.renormalize and self.top_k > 1:
            weights = top.softmax(-1, dtype=torch.float32)
        else:
            weights = (top.float() - logits.float().logsumexp(-1, keepdim=True)).exp()
        return logits, weights.to(x.dtype), indices
