"""``train.lr_schedule``: the learning rates the default recipe's scheduler sets, step by step (warmup,
then cosine to ``min_lr_ratio * lr`` or linear to 0 at ``max_steps``), and the field's validation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError
from orchestrator.sections import LR_SCHEDULES, TrainSection
from trainables.training.optim import lr_multiplier
from trainables.training.recipe import Recipe, WorkerInfo

LR = 0.01


def learning_rates(train: TrainSection, steps: int) -> list[float]:
    """The LR of each of ``steps`` optimizer steps under the default recipe's scheduler."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=train.lr)
    scheduler = Recipe(SimpleNamespace(train=train), WorkerInfo()).build_scheduler(optimizer)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_warms_up_then_decays_to_zero_at_max_steps() -> None:
    train = TrainSection(lr=LR, warmup_steps=4, max_steps=20, min_lr_ratio=0.1, lr_schedule="linear")
    lrs = learning_rates(train, 25)
    assert lrs[:5] == pytest.approx([LR * f for f in (0.25, 0.5, 0.75, 1.0, 1.0)])  # ramp, then the peak
    assert lrs[12] == pytest.approx(LR * 0.5)  # halfway through the decay
    assert lrs[19] == pytest.approx(LR / 16)  # the last step of the run
    assert lrs[20:] == [0.0] * 5  # 0 at max_steps, whatever min_lr_ratio says
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))  # never rises after the warmup


def test_linear_matches_transformers_after_warmup() -> None:
    """The seed's schedule, ``get_linear_schedule_with_warmup``: the same decay (its warmup starts at 0,
    ours at 1/warmup: a step that trains with LR 0 is wasted)."""
    from transformers import get_linear_schedule_with_warmup

    warmup, total = 3, 17
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    hf = get_linear_schedule_with_warmup(optimizer, warmup, total).lr_lambdas[0]
    for step in range(warmup, total + 3):
        assert lr_multiplier(step, warmup, total, 0.1, "linear") == pytest.approx(hf(step)), step


def test_cosine_stays_the_default() -> None:
    train = TrainSection(lr=LR, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    assert train.lr_schedule == "cosine"
    lrs = learning_rates(train, 22)
    assert lrs[:4] == pytest.approx([LR * f for f in (0.25, 0.5, 0.75, 1.0)])
    assert lrs[12] == pytest.approx(LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert lrs[20:] == pytest.approx([LR * 0.1] * 2)  # the floor, min_lr_ratio * lr


def test_no_warmup_starts_at_the_peak() -> None:
    assert learning_rates(TrainSection(lr=LR, warmup_steps=0, max_steps=4, lr_schedule="linear"), 5) \
        == pytest.approx([LR, LR * 0.75, LR * 0.5, LR * 0.25, 0.0])


def test_every_declared_schedule_is_implemented() -> None:
    for schedule in LR_SCHEDULES:
        assert lr_multiplier(0, 0, 10, 0.0, schedule) == 1.0
    with pytest.raises(ValueError, match="schedule: got 'step', expected cosine or linear"):
        lr_multiplier(0, 0, 10, 0.0, "step")


def test_a_bad_schedule_is_an_error_naming_the_field(tmp_path) -> None:
    assert TrainSection(lr_schedule="step").errors() == ["lr_schedule: got 'step', expected one of cosine, linear"]
    experiment = tmp_path / "e.yaml"
    experiment.write_text("name: e\nfamily: ensemble\ntrain: {lr_schedule: exponential, warmup_steps: -1}\n")
    with pytest.raises(ExperimentError) as caught:
        load_experiment(experiment)
    assert "train.lr_schedule: got 'exponential', expected one of cosine, linear" in caught.value.errors
    assert "train.warmup_steps: got -1, expected >= 0" in caught.value.errors  # every error at once
    assert load_experiment(experiment, ["train.lr_schedule=linear", "train.warmup_steps=2"]).train.lr_schedule \
        == "linear"
