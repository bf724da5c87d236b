"""The loop's shared pieces: validation numbers over ranks, the ``Strategy`` protocol, no registry in the worker."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from trainables.training import metrics
from trainables.training.strategies import DDPStrategy, DeepSpeedStrategy, Strategy


def test_validation_metrics_are_a_global_mean_and_its_capped_perplexity() -> None:
    assert metrics.validation_metrics(6.0, 4) == {"val_loss": 1.5, "val_perplexity": pytest.approx(math.exp(1.5))}
    assert metrics.validation_metrics(0.0, 0)["val_loss"] == 0.0  # nothing counted: no division by zero
    assert metrics.perplexity_of(1e4) == math.exp(metrics.MAX_LOG_PERPLEXITY)


def test_all_reduce_sum_without_a_process_group_is_the_tensor_itself() -> None:
    t = torch.tensor([1.0, 2.0])
    assert metrics.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("strategy", [DDPStrategy, DeepSpeedStrategy])
def test_both_strategies_implement_the_protocol(strategy: type) -> None:
    members = [name for name, _ in inspect.getmembers(Strategy, inspect.isfunction) if not name.startswith("_")]
    assert set(members) == {"wrap", "unwrap", "backward", "step", "save", "restore"}
    for name in members:
        expected = list(inspect.signature(getattr(Strategy, name)).parameters)
        got = list(inspect.signature(getattr(strategy, name)).parameters)
        assert got == expected or got == expected[1:], (name, got)  # unwrap may be a staticmethod (no self)
