"""Routing of one sample (for the Sankey diagram) and expert load over evaluation batches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from trainables.moe import load_balance_cv, load_share
from trainables.more.model import MoRELM


@dataclass(frozen=True)
class RoutingTrace:
    """Where each token of one sample went, per MoE call, in execution order."""

    tokens: list[str]  # (T,) printable token texts
    calls: list[tuple[int, int]]  # (layer, step) per MoE call
    top1: list[list[int]]  # [call][t]: the highest-weight expert of token t
    num_experts: int
    variant: str
    parallel_steps: bool  # more_c: steps are parallel branches, not one path


def _show(text: str) -> str:
    return text.replace("\n", "\\n") if text.strip() or text == "\n" else repr(text)[1:-1] or "·"


@torch.no_grad()
def routing_trace(model: MoRELM, ids: list[int], token_texts: list[str]) -> RoutingTrace:
    """Run one sample ``ids`` (T <= block_size) and record each token's top-1 expert per MoE call."""
    device = next(model.parameters()).device
    out = model(torch.tensor([ids], device=device))
    calls = [(r.layer, r.step) for r in out.routing]
    top1 = [r.expert_indices[:, 0].tolist() for r in out.routing]  # router top-k is sorted: column 0 = top-1
    return RoutingTrace([_show(t) for t in token_texts], calls, top1, model.cfg.num_experts, model.cfg.variant,
                        model.cfg.variant == "more_c")


@torch.no_grad()
def expert_load(model: MoRELM, batches: Iterable[torch.Tensor]) -> dict[tuple[int, int], torch.Tensor]:
    """Fraction of routed (token, expert) assignments per expert: {(layer, step): (E,)} over ``batches`` (B, T)."""
    device = next(model.parameters()).device
    totals: dict[tuple[int, int], torch.Tensor] = {}
    for x in batches:
        for r in model(x.to(device)).routing:
            key = (r.layer, r.step)
            totals[key] = totals.get(key, 0) + r.stats.tokens_per_expert.float().cpu()
    return {key: load_share(t) for key, t in sorted(totals.items())}


def load_cv(load: torch.Tensor) -> float:
    """Load-balance CV (std / mean) of one load vector (E,)."""
    return float(load_balance_cv(load))
