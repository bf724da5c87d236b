"""``NoveltyDetector``: has the stream turned to something the pool has no expert for?

It sees one value per optimizer step (averaged over every rank, so all ranks decide alike) and
decides over a window of the last ``detector_window`` steps:

- **router entropy** (the spec's criterion, two or more experts): the normalised entropy
  ``H(probs) / log E`` of the router, averaged over the window; novel when above
  ``entropy_threshold``: no expert's prototype is clearly closest;
- **loss** (one expert, whose router entropy is always 0): the window's mean training loss over a
  reference, the lowest window mean seen since the current expert settled; novel when
  ``mean / reference - 1`` exceeds ``loss_threshold``.

No decision within ``cooldown_steps`` of an expert's birth (its own seeding moves both values), and
none once the pool is full. Every decision is kept (``decisions``): step, criterion, value,
threshold, novel; the recipe reports them and the lifecycle picture draws them.
"""

from __future__ import annotations

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
        self.losses: deque[float] = deque(maxlen=cfg.detector_window)
        self.reference: float | None = None
        self.last_birth = 0
        self.decisions: list[Decision] = []

    def expert_added(self, step: int) -> None:
        """Start over after a birth: empty windows, no reference, a cooldown from ``step``."""
        self.entropies.clear()
        self.losses.clear()
        self.reference = None
        self.last_birth = step

    def observe(self, step: int, num_experts: int, entropy: float, loss: float,
                pool_full: bool) -> Decision | None:
        """Add step ``step``'s values; a ``Decision`` once the window is full and outside the cooldown."""
        self.entropies.append(entropy)
        self.losses.append(loss)
        if step - self.last_birth < self.cfg.cooldown_steps or len(self.losses) < self.cfg.detector_window:
            return None
        if num_experts >= 2:
            value = sum(self.entropies) / len(self.entropies)
            decision = Decision(step, "entropy", value, self.cfg.entropy_threshold,
                                value > self.cfg.entropy_threshold and not pool_full)
        else:
            mean = sum(self.losses) / len(self.losses)
            if self.reference is None:
                self.reference = mean
            value = mean / max(self.reference, 1e-9) - 1
            novel = value > self.cfg.loss_threshold and not pool_full
            if not novel:
                self.reference = min(self.reference, mean)
            decision = Decision(step, "loss", value, self.cfg.loss_threshold, novel)
        self.decisions.append(decision)
        return decision

    def state_dict(self) -> dict[str, Any]:
        """Plain data (goes into the checkpoint manifest, so a resumed run keeps its windows)."""
        return {"entropies": list(self.entropies), "losses": list(self.losses), "reference": self.reference,
                "last_birth": self.last_birth, "decisions": [asdict(d) for d in self.decisions]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entropies.clear()
        self.entropies.extend(state["entropies"])
        self.losses.clear()
        self.losses.extend(state["losses"])
        self.reference = state["reference"]
        self.last_birth = int(state["last_birth"])
        self.decisions = [Decision(**d) for d in state["decisions"]]
