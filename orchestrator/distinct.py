"""A Tune searcher wrapper that never hands out a configuration twice.

TPE over a small discrete space (``model.num_experts: {choice: [4, 8]}``, ``top_k: {choice: [1, 2]}``)
proposes configurations it has already run: 2 of 12 in one measured ``make sweep``, each a trial
that repeats a result at full cost. ``DistinctConfigs(searcher)`` asks the wrapped searcher again
instead, up to ``max_asks`` times per trial, and tells it about every repeat so it learns:

- a repeat of a finished trial completes at once with that trial's result (for Optuna: a
  COMPLETE trial with the same value, so TPE counts the point as evaluated);
- a repeat of a trial still running is reported as failed (Optuna ignores it).

When every ask is a repeat (a discrete space smaller than ``num_samples``), it returns
``Searcher.FINISHED``: the sweep ends with the configurations it has, and says so.

Its own state (the configurations seen, their results) is saved with the wrapped searcher's, so
``moe-orch sweep --resume`` does not rerun a configuration from before the interruption.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from ray.tune.search import Searcher

STATE = ("seen", "results", "inner_id", "key_of", "repeats")  # what get_state saves


def config_key(config: dict[str, Any]) -> str:
    """A configuration as a canonical string (nested keys sorted): equal configurations, equal keys."""
    return json.dumps(config, sort_keys=True, default=str)


class DistinctConfigs(Searcher):
    """Wraps ``searcher`` (e.g. ``OptunaSearch``); see the module docstring."""

    def __init__(self, searcher: Searcher, max_asks: int = 100) -> None:
        self.searcher, self.max_asks = searcher, max_asks
        self.seen: dict[str, str] = {}  # config key -> the trial that runs it
        self.results: dict[str, dict[str, Any]] = {}  # config key -> that trial's last result
        self.inner_id: dict[str, str] = {}  # our trial id -> the id the wrapped searcher knows it by
        self.key_of: dict[str, str] = {}  # our trial id -> its config key
        self.repeats = 0  # suggestions the wrapped searcher made that were repeats
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # -- Tune's searcher protocol, delegated -------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        for ask in range(self.max_asks):
            inner = trial_id if ask == 0 else f"{trial_id}~repeat{ask}"
            config = self.searcher.suggest(inner)
            if config is None or config == Searcher.FINISHED:
                return config
            key = config_key(config)
            if key not in self.seen:
                self.seen[key], self.inner_id[trial_id], self.key_of[trial_id] = trial_id, inner, key
                return config
            self.repeats += 1
            earlier = self.results.get(key)
            self.searcher.on_trial_complete(inner, result=earlier, error=earlier is None)
        print(f"[sweep] the searcher proposed only configurations already run ({self.max_asks} asks): "
              f"ending the sweep after {len(self.seen)} distinct configurations", flush=True)
        return Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.inner_id:
            self.searcher.on_trial_result(self.inner_id[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id not in self.inner_id:
            return
        if result and not error:
            self.results[self.key_of[trial_id]] = result
        self.searcher.on_trial_complete(self.inner_id[trial_id], result=result, error=error)

    def add_evaluated_point(self, parameters: dict, value: float, error: bool = False, pruned: bool = False,
                            intermediate_values: list[float] | None = None) -> None:
        self.searcher.add_evaluated_point(parameters, value, error, pruned, intermediate_values)

    # -- Tune's checkpoint protocol for wrappers ----------------------------------------------
    # Tune's SearchGenerator saves each wrapper's get_state() and the innermost searcher's own files
    # (it follows ``.searcher``), so --resume restores both.

    def get_state(self) -> dict[str, Any]:
        return copy.deepcopy({k: getattr(self, k) for k in STATE})

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
