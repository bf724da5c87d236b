"""An equal-compute training budget for MoRE: ``model.flops_budget`` training FLOPs -> optimizer steps.

The recurrent variants apply their blocks more often than ``base`` (``MoRELM.block_applications``),
so at the same FLOPs they get fewer steps. The count is measured, not derived by hand:

- forward FLOPs of one micro-batch: ``torch.utils.flop_counter.FlopCounterMode`` over one
  forward pass (with the loss) of a freshly initialised model on a random ``(batch_size,
  block_size)`` batch. It counts matrix multiplications and attention (``2·m·n·k`` per matmul),
  not element-wise work (norms, activations, softmax, the router's top-k). Dropless top-k
  routing sends exactly ``k`` copies of every token to experts, so the count does not depend
  on the routing (nor on the random batch);
- training FLOPs of one optimizer step: ``3 ×`` forward (backward ≈ 2 × forward) ``×
  grad_accum_steps × world_size``;
- steps: ``min(train.max_steps, floor(flops_budget / per_step))`` — ``train.max_steps`` is a
  cap, so a budget never trains longer than the YAML says. ``steps × per_step <= flops_budget``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from trainables.more.config import MoREConfig
from trainables.more.model import MoRELM

BACKWARD_FACTOR = 3  # training FLOPs = 3 x forward FLOPs (forward + backward ≈ 2 x forward)


@dataclass(frozen=True)
class FlopsPlan:
    """What a FLOPs budget buys: the steps to train and the training FLOPs of one step."""

    budget: float
    flops_per_step: int
    steps: int

    @property
    def train_flops(self) -> int:
        """Training FLOPs of all ``steps`` (<= ``budget``)."""
        return self.flops_per_step * self.steps


def forward_flops(cfg: MoREConfig, batch_size: int) -> int:
    """Counted FLOPs of one forward pass (logits and loss) on a ``(batch_size, cfg.block_size)`` batch."""
    model = MoRELM(cfg)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size), generator=gen)  # (B, T)
    y = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size), generator=gen)  # (B, T)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, y)
    return int(counter.get_total_flops())


def train_flops_per_step(cfg: MoREConfig, batch_size: int, grad_accum_steps: int = 1, world_size: int = 1) -> int:
    """Training FLOPs of one optimizer step: 3 x forward, over every micro-batch on every worker."""
    return BACKWARD_FACTOR * forward_flops(cfg, batch_size) * grad_accum_steps * world_size


def plan_steps(budget: float, flops_per_step: int, max_steps: int) -> FlopsPlan:
    """The steps a ``budget`` of training FLOPs buys at ``flops_per_step``, capped at ``max_steps``.

    Raises ValueError when the budget does not buy a single step."""
    steps = min(max_steps, math.floor(budget / flops_per_step))
    if steps < 1:
        raise ValueError(f"model.flops_budget: got {budget:.3g}, expected >= the training FLOPs of one step "
                         f"({flops_per_step:.3g})")
    return FlopsPlan(budget, flops_per_step, steps)
