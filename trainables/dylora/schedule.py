"""``TwoPhaseLRScheduler``: high-rate seeding of a new expert, then low-rate consolidation.

One optimizer param group per expert slot. The LR of group ``e`` at optimizer step ``s`` is an
*absolute* rate computed as ``base_lr[e] * multiplier(e, s)``: the schedule below yields
multipliers, never absolute rates. (The public DyLoRA-MoE code passes a lambda that returns an
absolute LR to ``LambdaLR``, which multiplies it by the base LR again: 1e-4 · 1e-4 = 1e-8.)

With ``age = s - birth[e]``::

    not born yet, or frozen          0
    age <  seed_steps (seeding)      warmup_stable_decay: linear warm-up over seed_warmup_steps to
                                     seed_lr_multiplier, flat, then a linear decay over the last
                                     DECAY_FRACTION of the seeding steps to consolidation_lr_multiplier;
                                     cyclical: triangular cycles of seed_cycle_steps between
                                     consolidation_lr_multiplier and seed_lr_multiplier
    age >= seed_steps (consolidation) consolidation_lr_multiplier

Births and freezes are events (``expert_added``, ``expert_frozen``) from the recipe, which applies
them at once to the groups' LRs; they are part of ``state_dict`` so a resumed run continues the same
schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch

DECAY_FRACTION = 0.25


def seeding_multiplier(age: int, cfg: Any) -> float:
    """The LR multiplier ``age`` steps into an expert's life (``cfg``: a ``DyLoRAConfig``)."""
    if age < 0:
        return 0.0
    low, peak = cfg.consolidation_lr_multiplier, cfg.seed_lr_multiplier
    if age >= cfg.seed_steps:
        return low
    if cfg.seed_schedule == "cyclical":
        phase = (age % cfg.seed_cycle_steps) / cfg.seed_cycle_steps  # 0 -> 1 within a cycle
        return low + (peak - low) * (1 - abs(2 * phase - 1))
    if age < cfg.seed_warmup_steps:
        return peak * (age + 1) / cfg.seed_warmup_steps
    decay_steps = max(1, math.ceil(cfg.seed_steps * DECAY_FRACTION))
    decay_start = cfg.seed_steps - decay_steps
    if age < decay_start:
        return peak
    return peak + (low - peak) * (age - decay_start + 1) / decay_steps


class TwoPhaseLRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Per-group LR = base LR x the two-phase multiplier of that group's expert (module docstring).

    Args:
        optimizer: its param groups are the expert slots, in slot order (``group["expert"]`` = slot).
        cfg: the ``DyLoRAConfig``.
        births: birth step per slot (None = not born), e.g. ``[0, None, None]`` at the start.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Any, births: list[int | None]) -> None:
        self.cfg = cfg
        self.births: list[int | None] = list(births)
        self.frozen_at: list[int | None] = [None] * len(births)
        super().__init__(optimizer)

    def multiplier(self, slot: int, step: int) -> float:
        birth, frozen = self.births[slot], self.frozen_at[slot]
        if birth is None or (frozen is not None and step >= frozen):
            return 0.0
        return seeding_multiplier(step - birth, self.cfg)

    def get_lr(self) -> list[float]:
        step = self.last_epoch  # the index of the optimizer step these rates are for
        return [base * self.multiplier(group.get("expert", i), step)
                for i, (base, group) in enumerate(zip(self.base_lrs, self.optimizer.param_groups, strict=True))]

    def _apply_now(self) -> None:
        """Set every group's LR for the next step after a birth or freeze (between two ``step()`` calls)."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def expert_added(self, slot: int, step: int) -> None:
        """Expert ``slot`` was born after ``step`` optimizer steps: it seeds from the next step on."""
        self.births[slot] = step
        self.frozen_at[slot] = None
        self._apply_now()

    def expert_frozen(self, slot: int, step: int) -> None:
        """Expert ``slot`` stops learning from optimizer step ``step`` on."""
        self.frozen_at[slot] = step
        self._apply_now()

    def phase_of(self, slot: int, step: int) -> str:
        """``unborn`` | ``seeding`` | ``consolidation`` | ``frozen`` at ``step``."""
        birth, frozen = self.births[slot], self.frozen_at[slot]
        if birth is None:
            return "unborn"
        if frozen is not None and step >= frozen:
            return "frozen"
        return "seeding" if step - birth < self.cfg.seed_steps else "consolidation"

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("cfg", None)  # plain data only (the checkpoint loads weights-only)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        cfg = self.cfg
        super().load_state_dict(state_dict)
        self.cfg = cfg
