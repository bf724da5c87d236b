"""Routing metrics as families report them (``trainables.moe.stats``): keys and means over layer calls."""

from __future__ import annotations

import pytest
import torch

from trainables.moe import RoutingMeter, load_balance_cv, load_share, routing_stats


def test_meter_averages_each_key_over_its_own_calls() -> None:
    meter = RoutingMeter()
    uniform = routing_stats(torch.full((4, 2), 0.5), torch.tensor([2, 2]))
    skewed = routing_stats(torch.tensor([[1.0, 0.0]] * 4), torch.tensor([4, 0]))
    meter.add("routing/L0/S1", uniform)
    meter.add("routing/L0/S1", skewed)
    meter.add("routing/L1", skewed)
    got = meter.metrics()
    assert set(got) == {f"{key}/{name}" for key in ("routing/L0/S1", "routing/L1")
                        for name in ("load/E0", "load/E1", "entropy", "cv")}
    assert got["routing/L0/S1/load/E0"] == pytest.approx(0.75) and got["routing/L1/load/E0"] == 1.0
    assert got["routing/L0/S1/entropy"] == pytest.approx(0.5) and got["routing/L1/entropy"] == pytest.approx(0.0)
    assert got["routing/L0/S1/cv"] == pytest.approx(0.5) and got["routing/L1/cv"] == pytest.approx(1.0)


def test_share_and_cv_of_counts_per_layer() -> None:
    counts = torch.tensor([[3.0, 1.0], [0.0, 0.0]])  # (L, E): layer 1 routed nothing
    assert load_share(counts).tolist() == [[0.75, 0.25], [0.0, 0.0]]
    assert load_balance_cv(counts).tolist() == pytest.approx([0.5, 0.0])
