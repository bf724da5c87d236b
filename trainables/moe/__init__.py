"""The shared MoE core: router, expert bank, dispatch, aux losses, routing stats."""

from trainables.moe.dispatch import DispatchResult, dispatch, expert_capacity
from trainables.moe.experts import ACTIVATIONS, DenseFFN, ExpertBank
from trainables.moe.layer import MoELayer, MoEOutput
from trainables.moe.losses import RoutingStats, load_balance_loss, router_z_loss, routing_stats
from trainables.moe.router import RouterOutput, TopKRouter

__all__ = [
    "ACTIVATIONS",
    "DenseFFN",
    "DispatchResult",
    "ExpertBank",
    "MoELayer",
    "MoEOutput",
    "RouterOutput",
    "RoutingStats",
    "TopKRouter",
    "dispatch",
    "expert_capacity",
    "load_balance_loss",
    "router_z_loss",
    "routing_stats",
]
