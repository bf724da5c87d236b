"""Optuna samplers that survive pickling, whatever Optuna release is installed.

Ray Tune pickles the search algorithm with the rest of the sweep's state (``Tuner(...)`` writes it
at once, and again at every save for ``--resume``). Optuna 5.1's genetic samplers (NSGA-II) hold a
``threading.Lock`` (``_thread_lock``), which cannot be pickled: every two-objective sweep failed with
``TypeError: cannot pickle '_thread.lock' object``. Optuna 5.0 holds no lock. ``nsga2`` returns a
sampler whose pickled state leaves its locks out and gets fresh ones when it is loaded, on any 5.x.
"""

from __future__ import annotations

import threading
from typing import Any

import optuna

_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))


class NSGAIISampler(optuna.samplers.NSGAIISampler):
    """``optuna.samplers.NSGAIISampler`` that pickles: locks are dropped and made anew on load."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_moe_orch_locks"] = {k: isinstance(v, type(threading.RLock())) for k, v in state.items()
                                    if isinstance(v, _LOCK_TYPES)}
        for name in state["_moe_orch_locks"]:
            del state[name]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        locks = state.pop("_moe_orch_locks", {})
        self.__dict__.update(state)
        for name, reentrant in locks.items():
            setattr(self, name, threading.RLock() if reentrant else threading.Lock())


# Optuna names its study attributes after the sampler's class (``__init_subclass__``): keep Optuna's names,
# so a study written by either class reads the same.
for _key in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
    if hasattr(optuna.samplers.NSGAIISampler, _key):
        setattr(NSGAIISampler, _key, getattr(optuna.samplers.NSGAIISampler, _key))


def nsga2(seed: int | None) -> NSGAIISampler:
    """Optuna's NSGA-II sampler (several objectives), safe to pickle into Tune's sweep state."""
    return NSGAIISampler(seed=seed)


def tpe(seed: int | None) -> optuna.samplers.TPESampler:
    """Optuna's TPE sampler (one objective)."""
    return optuna.samplers.TPESampler(seed=seed)
