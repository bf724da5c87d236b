"""The sweep's pure helpers, which only slow end-to-end tests reached before: summary rows and their
status and the Optuna study rebuilt for the plots (``orchestrator.report``), and the trial namer
(``orchestrator.sweep``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.config import load_experiment
from orchestrator.report import expected_reports, optuna_study, trial_row, trial_status
from orchestrator.storage import Storage
from orchestrator.sweep import TrialNamer

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"


@pytest.mark.parametrize("error, reports, finished, status", [
    (True, 3, True, "ERROR"),          # it raised, whatever it reported
    (False, 1, False, "STOPPED"),      # ASHA cut it: fewer reports, the driver never wrote timing.json
    (False, 3, True, "TERMINATED"),    # ran every report
    (False, 1, True, "TERMINATED"),    # fewer reports but its driver returned: e.g. max_steps not a multiple
    (False, 3, False, "TERMINATED"),
])
def test_trial_status(error: bool, reports: int, finished: bool, status: str) -> None:
    assert trial_status(error, reports, 3, finished) == status


def test_trial_row() -> None:
    exp = load_experiment(TINY)  # 30 steps, eval every 10: 3 reports; space model.top_k, train.lr
    assert expected_reports(exp) == 3
    metrics = {"training_iteration": 1, "step": 10, "val_loss": 4.2, "train_time_s": 5.0, "time_total_s": 9.0}
    row = trial_row(exp, "tiny_001", {"model.top_k": 2, "train.lr": 0.003}, metrics, False, {}, "abc")
    assert row == {"trial": "tiny_001", "model.top_k": 2, "train.lr": 0.003, "val_loss": 4.2, "status": "STOPPED",
                   "reports": 1, "step": 10, "wall_time_s": 9.0, "train_time_s": 5.0, "overhead_s": 4.0,
                   "startup_s": None, "teardown_s": None, "run_id": "abc"}
    timing = {"wall_time_s": 12.345, "startup_s": 4.001, "teardown_s": 1.0}
    row = trial_row(exp, "tiny_000", {"model.top_k": 1}, {**metrics, "training_iteration": 3}, False, timing, None)
    assert (row["status"], row["wall_time_s"], row["overhead_s"], row["startup_s"], row["train.lr"]) == \
        ("TERMINATED", 12.35, 7.35, 4.0, None)


def test_trial_namer_continues_after_existing_folders(tmp_path: Path) -> None:
    (tmp_path / "tiny_000").mkdir()
    (tmp_path / "tiny_004").mkdir()
    (tmp_path / "other_009").mkdir()
    namer = TrialNamer("tiny", Storage.at(tmp_path))
    first, second = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    assert namer(first) == "tiny_005" and namer(second) == "tiny_006"
    assert namer(first) == "tiny_005"  # stable for the same trial (Tune asks for the name and the folder)
    assert TrialNamer("tiny", Storage.at(tmp_path))(first) == "tiny_005"  # a copy of the namer (Tune copies it) agrees


def test_optuna_study_rebuilds_completed_trials() -> None:
    exp = load_experiment(TINY)
    rows = [
        {"trial": "tiny_000", "model.top_k": 1, "train.lr": 0.002, "val_loss": 3.0, "status": "TERMINATED"},
        {"trial": "tiny_001", "model.top_k": 2, "train.lr": 0.005, "val_loss": 2.5, "status": "STOPPED"},
        {"trial": "tiny_002", "model.top_k": 2, "train.lr": 0.004, "val_loss": None, "status": "STOPPED"},
        {"trial": "tiny_003", "model.top_k": 1, "train.lr": 0.009, "val_loss": 1.0, "status": "ERROR"},
    ]
    study = optuna_study(exp, rows)
    assert [t.user_attrs["trial"] for t in study.trials] == ["tiny_000", "tiny_001"]  # no metric / errored: out
    assert study.best_trial.params == {"model.top_k": 2, "train.lr": 0.005} and study.best_value == 2.5
    assert study.trials[0].distributions["train.lr"].log  # loguniform stays log-scaled
