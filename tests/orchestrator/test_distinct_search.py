"""DistinctConfigs around a real OptunaSearch (TPE): no configuration handed out twice, repeats told to
the searcher, the space's end reached cleanly, and the state surviving save/restore (``--resume``)."""

from __future__ import annotations

from pathlib import Path

import optuna
from ray import tune
from ray.tune.search import Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from orchestrator.distinct import DistinctConfigs, config_key

SPACE = {"model": {"num_experts": tune.choice([2, 4, 8])}, "train": {"lr": tune.choice([0.1, 0.01])}}  # 6 points


def searcher(seed: int = 0) -> DistinctConfigs:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wrapped = DistinctConfigs(OptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=2)),
                              max_asks=200)
    wrapped.set_search_properties("val_loss", "min", SPACE)
    return wrapped


def run_trials(search: DistinctConfigs, count: int, start: int = 0) -> list[dict]:
    """Suggest and complete ``count`` trials in turn (the loss depends on the config), like Tune would."""
    configs = []
    for i in range(start, start + count):
        config = search.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        configs.append(config)
        loss = config["model"]["num_experts"] * config["train"]["lr"]
        search.on_trial_result(f"t{i}", {"val_loss": loss, "training_iteration": 1})
        search.on_trial_complete(f"t{i}", {"val_loss": loss, "training_iteration": 1})
    return configs


def test_every_configuration_once_then_the_search_ends() -> None:
    search = searcher()
    configs = run_trials(search, 12)
    keys = [config_key(c) for c in configs]
    assert len(keys) == len(set(keys)) == 6  # all six points, none twice, then FINISHED
    assert search.repeats > 0  # TPE did propose repeats: they were asked again, not run
    study = search.searcher._ot_study
    states = [t.state for t in study.trials]
    # every repeat was told to TPE as a completed point with the earlier result, never left running
    assert states.count(optuna.trial.TrialState.COMPLETE) == len(study.trials)
    assert len(study.trials) == 6 + search.repeats


def test_a_repeat_of_a_running_trial_is_not_handed_out() -> None:
    search = searcher(seed=3)
    first = search.suggest("a")
    running = {config_key(first)}
    for i in range(5):  # nothing completes: every suggestion must still differ from those running
        config = search.suggest(f"b{i}")
        assert config_key(config) not in running
        running.add(config_key(config))


def test_the_seen_configurations_survive_tunes_checkpoint(tmp_path: Path) -> None:
    """Saved and restored the way Tune does it (``SearchGenerator.save_to_dir`` / ``restore_from_dir``)."""
    search = searcher()
    before = run_trials(search, 3)
    SearchGenerator(search).save_to_dir(str(tmp_path), "test")
    restored = searcher()
    SearchGenerator(restored).restore_from_dir(str(tmp_path))
    assert restored.seen == search.seen
    after = run_trials(restored, 10, start=3)
    keys = [config_key(c) for c in before + after]
    assert len(keys) == len(set(keys)) == 6
