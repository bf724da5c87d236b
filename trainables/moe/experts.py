"""Expert banks: E feed-forward networks stored as stacked weights.

Experts are never separate modules. Their weights live in two (E, ...) tensors so
that dispatch can run one matmul per expert over a contiguous slice of tokens
(see ``dispatch.py`` and ``grouped.py``) instead of one module call per token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.moe.grouped import GroupedFFN

ACTIVATIONS = ("swiglu", "gelu")


class ExpertBank(nn.Module):
    """E independent FFN experts, d_model -> hidden -> d_model.

    ``swiglu``: ``w2 · (silu(x·w_gate) * (x·w_up))``, with w_gate and w_up fused into
    one (E, D, 2H) tensor so each expert does a single input matmul.
    ``gelu``: ``w2 · gelu(x·w1)``.

    Args:
        num_experts: E.
        d_model: D, token width.
        hidden: H, each expert's inner width.
        activation: "swiglu" or "gelu".
    """

    def __init__(self, num_experts: int, d_model: int, hidden: int, activation: str = "swiglu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: got {activation!r}, expected one of {ACTIVATIONS}")
        self.num_experts = num_experts
        self.d_model = d_model
        self.hidden = hidden
        self.activation = activation
        in_width = 2 * hidden if activation == "swiglu" else hidden
        self.w_in = nn.Parameter(torch.empty(num_experts, d_model, in_width))  # (E, D, 2H | H)
        self.w_out = nn.Parameter(torch.empty(num_experts, hidden, d_model))  # (E, H, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.w_in, std=1.0 / math.sqrt(self.d_model))
        nn.init.normal_(self.w_out, std=1.0 / math.sqrt(self.hidden))

    def params_per_expert(self) -> int:
        """Parameters of one expert: what a token activates per chosen expert."""
        return (self.w_in.numel() + self.w_out.numel()) // self.num_experts

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Run each expert on its contiguous slice of ``x``.

        Args:
            x: (N, D) tokens grouped by expert: the first ``counts[0]`` rows go to
                expert 0, the next ``counts[1]`` to expert 1, and so on.
            counts: E row counts summing to N.
        Returns:
            (N, D) expert outputs, in the same row order.
        """
        return GroupedFFN.apply(x, self.w_in, self.w_out, counts, self.activation)


class DenseFFN(nn.Module):
    """A single dense FFN with the same parametrisation as one expert.

    Used as the optional shared expert of an MoE layer, and as the dense baseline
    that a 1-expert MoE must reproduce exactly.
    """

    def __init__(self, d_model: int, hidden: int, activation: str = "swiglu") -> None:
        super().__init__()
        self.bank = ExpertBank(1, d_model, hidden, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (..., D) -> (..., D)."""
        tokens = x.reshape(-1, x.shape[-1])  # (N, D)
        return self.bank(tokens, [tokens.shape[0]]).reshape(x.shape)
