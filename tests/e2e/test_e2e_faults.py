"""Fault tolerance end to end: a Train worker killed by its pid mid-run; the run finishes from its
latest checkpoint in the same MLflow run, with a continuous metric history (real local Ray)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support import ray_processes

from orchestrator.cli import main

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
EVAL_EVERY, MAX_STEPS = 20, 200


def _kill_a_worker_after_first_checkpoint(uri: str, killed: dict, deadline_s: float = 600.0) -> None:
    """Wait for the run's first report (it comes with a checkpoint), then SIGKILL the train worker."""
    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and "pid" not in killed:
        time.sleep(0.2)
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if not runs:
            continue
        steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")]
        workers = ray_processes("ray::RayTrainWorker")
        if steps and workers:
            killed.update(step=max(steps), pid=workers[0].pid)
            os.kill(workers[0].pid, signal.SIGKILL)


def test_a_killed_train_worker_resumes_in_the_same_run(workdir: Path) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    killed: dict = {}
    killer = threading.Thread(target=_kill_a_worker_after_first_checkpoint, args=(uri, killed), daemon=True)
    killer.start()
    result = CliRunner().invoke(main, ["train", str(TINY), f"tracking.uri={uri}", f"train.max_steps={MAX_STEPS}",
                                       f"train.eval_every={EVAL_EVERY}", "train.max_failures=1"])
    killer.join(timeout=5)
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "pid" in killed, "the run ended before a worker could be killed"
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == psutil.STATUS_ZOMBIE

    client = MlflowClient(tracking_uri=uri)
    run_id = result.stdout.rsplit("MLflow run: ", 1)[1].split()[0]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the same run, no second one
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == list(range(EVAL_EVERY, MAX_STEPS + 1, EVAL_EVERY))  # continuous: no gap, no repeat
    resumed = [m.value for m in client.get_metric_history(run_id, "resumed_from_step")]
    assert len(resumed) == 1 and resumed[0] >= killed["step"]  # lost at most one checkpoint interval
