"""The tutorial's value learning over experts, and the one place the values decide something.

The tutorial's ``MixtureOfExperts`` keeps a value per expert, updates the selected expert's value
with ``V <- V + alpha * (r + gamma * max V - V)`` (``r``: intrinsic + external reward), decays the
exploration rate as ``max(0.1, 1 - it / min_iterations)`` and stops when ``it >= min_iterations``
and the reward reaches 10. It never uses the values or the exploration rate. Here they choose
**which experts answer** when ``experts_per_query`` is less than ``num_experts``, epsilon-greedy:

- with probability ``exploration_rate``: ``experts_per_query`` experts drawn uniformly (explore);
- otherwise: the ``experts_per_query`` experts of highest value, ties broken at random (exploit).

With every expert answering (``experts_per_query: null``, the tutorial's setting) the values are
learned and logged but decide nothing, as in the tutorial. The evaluator also reports the
accuracy of the highest-valued expert alone, which says whether the values learned anything.

Two readings of the tutorial, documented:

- **Termination**: the tutorial compares the *current iteration's* total reward (at most 2.0)
  with 10, so it never stops. Here the reward summed over iterations is compared.
- **The repetition rule** (``repetition_rule: true``, the tutorial's): when the judges select an
  expert that was selected before, a random expert is credited instead (the chosen answer is
  kept). After a few iterations nearly every selection repeats, so most credit goes to random
  experts; turn it off to credit the judges' choice.

The iteration count ``it`` in the schedule is 0-based, as in the tutorial's loop, so the
configured ``exploration_rate`` holds for the first iteration only, and then the schedule
(1 - it/min_iterations, floor 0.1) takes over.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ValueState:
    """Everything value learning carries from one iteration to the next (saved in checkpoints)."""

    values: list[float]
    exploration_rate: float
    selection_history: list[int] = field(default_factory=list)
    cumulative_reward: float = 0.0
    iterations: int = 0
    value_history: list[list[float]] = field(default_factory=list)  # the values after each iteration

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValueState:
        return cls(**data)


class ValueLearner:
    """The tutorial's update, schedule and termination over a ``ValueState`` (module docstring)."""

    def __init__(self, cfg: Any, state: ValueState) -> None:
        self.cfg, self.state = cfg, state

    @classmethod
    def fresh(cls, cfg: Any) -> ValueLearner:
        return cls(cfg, ValueState([0.0] * cfg.num_experts, cfg.exploration_rate))

    def choose(self, rng: random.Random) -> tuple[list[int], bool]:
        """The experts that answer this iteration (sorted) and whether it explored."""
        n, k = self.cfg.num_experts, self.cfg.experts_per_query or self.cfg.num_experts
        if k >= n:
            return list(range(n)), False
        if rng.random() < self.state.exploration_rate:
            return sorted(rng.sample(range(n), k)), True
        ranked = sorted(range(n), key=lambda e: (-self.state.values[e], rng.random()))
        return sorted(ranked[:k]), False

    def credit(self, selected: int, rng: random.Random) -> int:
        """The expert the reward is credited to: the selected one, or (repetition rule) a random one
        if it was selected before. Appends to the selection history either way."""
        credited = selected
        if self.cfg.repetition_rule and selected in self.state.selection_history:
            credited = rng.randint(0, self.cfg.num_experts - 1)
        self.state.selection_history.append(credited)
        return credited

    def update(self, expert: int, reward: float) -> float:
        """``V[e] += alpha * (r + gamma * max V - V[e])``; returns the new value."""
        values = self.state.values
        values[expert] += self.cfg.learning_rate * (reward + self.cfg.discount_factor * max(values) - values[expert])
        self.state.cumulative_reward += reward
        return values[expert]

    def end_iteration(self, iteration: int) -> None:
        """Count iteration ``iteration`` (0-based) as done and apply the exploration schedule after it."""
        self.state.iterations += 1
        self.state.value_history.append([round(v, 6) for v in self.state.values])
        self.update_exploration_rate(iteration)

    def update_exploration_rate(self, iteration: int) -> float:
        """The tutorial's schedule, after iteration ``iteration`` (0-based)."""
        self.state.exploration_rate = max(0.1, 1.0 - iteration / self.cfg.min_iterations)
        return self.state.exploration_rate

    def finished(self) -> bool:
        """At least ``min_iterations`` done and the summed reward at ``reward_threshold`` or more."""
        return (self.state.iterations >= self.cfg.min_iterations
                and self.state.cumulative_reward >= self.cfg.reward_threshold)

    def best_expert(self) -> int:
        """The highest-valued expert (the lowest index among ties)."""
        values = self.state.values
        return max(range(len(values)), key=lambda e: (values[e], -e))
