"""``NoveltyDetector``: has the stream turned to something the pool has no expert for?

It sees one value per optimizer step (averaged over every rank, so all ranks decide alike) and
decides over windows of the last ``detector_window`` steps:

- **router entropy** (the spec's criterion, two or more experts): the normalised entropy
  ``H(probs) / log E`` of the router, averaged over the window; novel when above
  ``entropy_threshold``: no expert's prototype is clearly closest;
- **loss change** (one expert, whose router entropy is always 0): a two-sample test between the
  training losses of the last two windows, ``z = (mean_now - mean_before) / (s * sqrt(2 / w))``
  with ``s`` their pooled standard deviation; novel when ``|z| > loss_z_threshold``. It is
  two-sided because a new skill can be *easier* than the old one: after training on
  ``python_basics``, SmolLM2's held-out loss on ``web_requests`` was 0.65 against 0.84 on the
  skill it had just learnt (measured here), so a one-sided "the loss rose" test never fires there.
  Learning itself moves the loss slowly; a change of skill moves it in one step.

A decision needs ``detector_patience`` novel windows in a row. No decision within
``cooldown_steps`` of an expert's birth (its own seeding moves both values), and none once the
pool is full. Every decision is kept (``decisions``): step, criterion, value, threshold, novel;
the recipe reports them and the lifecycle picture draws them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    step: int
    criterion: str  # "entropy" | "loss"
    value: float
    threshold: float
    novel: bool


class NoveltyDetector:
    """Windowed novelty decisions (see the module docstring); ``cfg`` is a ``DyLoRAConfig``."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.entropies: deque[float] = deque(maxlen=cfg.detector_window)
        self.losses: deque[float] = deque(maxlen=2 * cfg.detector_window)  # the window before, then this one
        self.last_birth = 0
        self.streak = 0  # novel windows in a row
        self.decisions: list[Decision] = []

    def expert_added(self, step: int) -> None:
        """Start over after a birth: empty windows, a cooldown from ``step``."""
        self.entropies.clear()
        self.losses.clear()
        self.streak = 0
        self.last_birth = step

    def observe(self, step: int, num_experts: int, entropy: float, loss: float,
                pool_full: bool) -> Decision | None:
        """Add step ``step``'s values; a ``Decision`` once the windows are full and outside the cooldown."""
        self.entropies.append(entropy)
        self.losses.append(loss)
        if step - self.last_birth < self.cfg.cooldown_steps:
            return None
        if num_experts >= 2:
            if len(self.entropies) < self.cfg.detector_window:
                return None
            value, threshold = sum(self.entropies) / len(self.entropies), self.cfg.entropy_threshold
            criterion, over = "entropy", value > threshold
        else:
            if len(self.losses) < 2 * self.cfg.detector_window:
                return None
            value, threshold = self.loss_change(), self.cfg.loss_z_threshold
            criterion, over = "loss", abs(value) > threshold
        self.streak = self.streak + 1 if over else 0
        decision = Decision(step, criterion, value, threshold,
                            self.streak >= self.cfg.detector_patience and not pool_full)
        self.decisions.append(decision)
        return decision

    def loss_change(self) -> float:
        """``z`` of the last window's mean training loss against the window before it (module docstring)."""
        w = self.cfg.detector_window
        history = list(self.losses)
        before, now = history[:w], history[w:]
        mean_before, mean_now = sum(before) / w, sum(now) / w
        squares = sum((x - mean_before) ** 2 for x in before) + sum((x - mean_now) ** 2 for x in now)
        pooled = squares / max(1, 2 * w - 2)
        return (mean_now - mean_before) / max(math.sqrt(pooled * 2 / w), 1e-6)

    def state_dict(self) -> dict[str, Any]:
        """Plain data (goes into the checkpoint manifest, so a resumed run keeps its windows)."""
        return {"entropies": list(self.entropies), "losses": list(self.losses), "streak": self.streak,
                "last_birth": self.last_birth, "decisions": [asdict(d) for d in self.decisions]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entropies.clear()
        self.entropies.extend(state["entropies"])
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.streak = int(state.get("streak", 0))
        self.last_birth = int(state["last_birth"])
        self.decisions = [Decision(**d) for d in state["decisions"]]
