"""A 1-worker sweep trial's loop in its own process (``orchestrator.sweep.fit_in_process``): every report
reaches MLflow and the searcher, checkpoints stay under the trial in storage (a local folder, or an S3
bucket), and a trial run again after a failure resumes from its newest checkpoint, keeping one continuous
metric history."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator import registry
from orchestrator.config import load_experiment
from orchestrator.storage import Storage
from orchestrator.sweep import fit_in_process
from orchestrator.tracking import Store


@pytest.fixture(autouse=True)
def _registrations_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy families are registered for this module only (other tests list the known families)."""
    monkeypatch.setattr(registry, "_REFS", dict(registry._refs()))
    monkeypatch.setattr(registry, "_LOADED", dict(registry._LOADED))


def _experiment(tmp_path: Path, max_failures: int):
    import example_family.flaky as flaky

    registry.register("example_family.family:FAMILY")
    registry.register("example_family.flaky:FAMILY")
    flaky.FAILED["once"] = False
    path = tmp_path / "flaky.yaml"
    path.write_text(yaml.safe_dump({
        "name": "flaky", "family": "flaky_toy", "model": {"dim": 4}, "data": {"noise": 0.01},
        "train": {"max_steps": 40, "batch_size": 16, "lr": 0.2, "warmup_steps": 1, "eval_every": 10,
                  "max_failures": max_failures, "keep_checkpoints": 2}}))
    return load_experiment(path)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage.at(tmp_path / "storage")
    return Storage.at(request.getfixturevalue("s3").uri(f"in-process-{tmp_path.name}"))


def test_a_failed_trial_run_again_resumes_from_its_newest_checkpoint(tmp_path: Path, storage: Storage) -> None:
    exp = _experiment(tmp_path, max_failures=1)
    store = Store.at(f"sqlite:///{tmp_path}/mlflow.db")
    run = store.start_run(store.experiment_id("flaky"), "flaky_000")
    reports: list[dict] = []
    train = storage / "train"
    metrics, checkpoint, error = fit_in_process(exp, "flaky_000", train, run, None, reports.append)
    assert isinstance(error, RuntimeError) and "injected failure at step 25" in str(error)
    assert metrics["step"] == 20 and checkpoint.path == (train / "checkpoint_000020").path

    # what Tune does next (FailureConfig(max_failures=train.max_failures)): the same trial, called again, from
    # another process with the storage's URI alone (on a cluster: perhaps another node)
    train = Storage.at(storage.uri) / "train"
    metrics, checkpoint, error = fit_in_process(exp, "flaky_000", train, run, None, reports.append)
    assert error is None and metrics["step"] == 40
    assert [r["step"] for r in reports] == [10, 20, 30, 40] and reports[2]["resumed_from_step"] == 20
    assert checkpoint.path == (train / "checkpoint_000040").path
    assert [c.name for c in train.folders()] == ["checkpoint_000030", "checkpoint_000040"]
    with checkpoint.as_directory() as local:  # what the trial logs to MLflow and evaluates
        assert (Path(local) / "model" / "config.json").is_file()
    history = run.metric_history("val_loss")["val_loss"]
    assert [step for step, _ in history] == [10, 20, 30, 40] and history[-1][1] < history[0][1]
