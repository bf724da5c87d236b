"""The sweep's Optuna samplers pickle (Tune saves them in its state) and still sample afterwards, on the
installed Optuna (5.1's NSGA-II holds a thread lock; pickling it failed every two-objective sweep)."""

from __future__ import annotations

import pickle

import optuna
import pytest
from ray import cloudpickle
from ray.tune.search.optuna import OptunaSearch

from orchestrator import samplers


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_nsga2_round_trips_and_keeps_sampling(dumps) -> None:
    sampler = samplers.nsga2(seed=3)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("k", 1, 4)), n_trials=3)
    copy = pickle.loads(dumps(sampler))
    assert type(copy) is type(sampler) and copy._population_size == sampler._population_size
    again = optuna.create_study(directions=["minimize", "maximize"], sampler=copy)
    again.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_int("k", 1, 4)), n_trials=3)
    assert len(again.trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials)


def test_the_search_algorithm_tune_pickles_holds_no_lock() -> None:
    """What ``tune.Tuner(...)`` pickles: OptunaSearch over two metrics with our NSGA-II, before and after
    it has suggested a configuration."""
    search = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)}, metric=["a", "b"],
                          mode=["min", "max"], sampler=samplers.nsga2(seed=0))
    cloudpickle.loads(cloudpickle.dumps(search))
    assert search.suggest("t1") is not None
    restored = cloudpickle.loads(cloudpickle.dumps(search))
    assert restored.suggest("t2") is not None


def test_study_attribute_names_are_optunas() -> None:
    """Optuna keys a study's generation cache by the sampler's class name: ours keeps Optuna's."""
    base = optuna.samplers.NSGAIISampler
    for key in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
        if hasattr(base, key):
            assert getattr(samplers.NSGAIISampler, key) == getattr(base, key)
