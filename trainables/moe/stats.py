"""Routing metrics as a family reports them: per MoE layer, the share of assignments each expert
gets, the router's normalised entropy and the load-balance CV, averaged over evaluation batches.

``RoutingMeter`` collects the ``RoutingStats`` of every MoE layer call under a key (e.g.
``routing/L3`` for layer 3, or ``routing/L3/S2`` for layer 3 at recurrence step 2) and reports
the means over the calls of that key::

    {"<key>/load/E<i>": share of the assignments expert i got,
     "<key>/entropy": router entropy / log E,
     "<key>/cv": std / mean of the assignments per expert}
"""

from __future__ import annotations

from collections import defaultdict

import torch

from trainables.moe.losses import RoutingStats


def load_share(counts: torch.Tensor) -> torch.Tensor:
    """Assignments per expert as shares of all of them (each row sums to 1, or 0 if empty); counts (..., E)."""
    counts = counts.float()
    return counts / counts.sum(-1, keepdim=True).clamp_min(1)


class RoutingMeter:
    """Running means of routing stats per key (module docstring); ``metrics()`` reports them."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.keys: dict[str, str] = {}  # metric name -> the key it averages over

    def add(self, key: str, stats: RoutingStats) -> None:
        """One layer call's stats under ``key`` (e.g. ``"routing/L0"``)."""
        values = {f"{key}/load/E{e}": share for e, share in enumerate(load_share(stats.tokens_per_expert).tolist())}
        values.update({f"{key}/entropy": float(stats.router_entropy), f"{key}/cv": float(stats.load_balance_cv)})
        for name, value in values.items():
            self.sums[name] += value
            self.keys[name] = key
        self.calls[key] += 1

    def metrics(self) -> dict[str, float]:
        """``{"<key>/load/E<i>", "<key>/entropy", "<key>/cv"}``: each a mean over the calls of its key."""
        return {name: total / self.calls[self.keys[name]] for name, total in self.sums.items()}
