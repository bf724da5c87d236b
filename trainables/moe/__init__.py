"""The shared MoE core: router, expert bank, dispatch, aux losses, routing stats and the metrics reported from them."""

from trainables.moe.dispatch import DispatchResult, dispatch, expert_capacity
from trainables.moe.experts import ACTIVATIONS, DenseFFN, ExpertBank
from trainables.moe.layer import MoELayer, MoEOutput
from trainables.moe.losses import (
    RoutingStats,
    load_balance_cv,
    load_balance_loss,
    router_entropy,
    router_z_loss,
    routing_stats,
)
from trainables.moe.router import RouterOutput, TopKRouter
from trainables.moe.stats import RoutingMeter, load_share

__all__ = [
    "ACTIVATIONS",
    "DenseFFN",
    "DispatchResult",
    "ExpertBank",
    "MoELayer",
    "MoEOutput",
    "RouterOutput",
    "RoutingMeter",
    "RoutingStats",
    "TopKRouter",
    "dispatch",
    "expert_capacity",
    "load_balance_cv",
    "load_balance_loss",
    "load_share",
    "router_entropy",
    "router_z_loss",
    "routing_stats",
]
