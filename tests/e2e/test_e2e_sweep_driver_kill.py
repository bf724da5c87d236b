"""A sweep driver killed with SIGKILL mid-sweep, then ``--resume``: no finished trial runs again, and
MLflow holds exactly one nested run per trial, none left RUNNING (real local Ray in a subprocess,
the way a user runs ``moe-orch``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from support import wait_for

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"
pytestmark = pytest.mark.slow
TRIALS = 3


def _moe_orch(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", "sweep", str(TINY), f"tracking.uri=sqlite:///{workdir}/mlflow.db",
            "train.max_steps=20", f"sweep.num_samples={TRIALS}", "sweep.max_concurrent_trials=1",
            "sweep.scheduler=none", *args]


def test_a_killed_sweep_driver_resumes(workdir: Path) -> None:
    sweep_dir = workdir / "ray_results" / "tiny" / "sweep"
    first, second = sweep_dir / "tiny_000", sweep_dir / "tiny_001"
    with (workdir / "first.log").open("w") as log:
        proc = subprocess.Popen(_moe_orch(workdir), cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            # the first trial has finished and the second is training when the driver dies
            wait_for(lambda: (first / "final.json").exists() and (second / "mlflow_run_id").exists(), 900, alive=proc)
            started = psutil.Process(proc.pid).children(recursive=True)  # the local Ray it started
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
    _, alive = psutil.wait_procs(started, timeout=60)  # Ray's processes share the driver's fate
    for leftover in alive:  # stop what we started, by pid, if any outlived it
        leftover.kill()
    stamp = (first / "timing.json").stat().st_mtime_ns
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    first_run_id = (first / "mlflow_run_id").read_text().strip()

    resumed = subprocess.run(_moe_orch(workdir, "--resume"), cwd=workdir, capture_output=True, text=True,
                             timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the sweep" in resumed.stdout

    parent_id = (sweep_dir / "mlflow_parent_run_id").read_text().strip()
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment_id])  # active runs only: an orphan would be soft-deleted
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    names = sorted(r.info.run_name for r in children)
    assert len(children) == TRIALS and len(set(names)) == TRIALS, names  # one nested run per trial
    assert {r.info.run_id for r in runs} == {parent_id} | {r.info.run_id for r in children}  # one parent
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert first_run_id in {r.info.run_id for r in children}
    assert (first / "timing.json").stat().st_mtime_ns == stamp  # the finished trial did not run again
