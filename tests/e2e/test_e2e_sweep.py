"""``moe-orch sweep`` end to end: 3 trials with Optuna + ASHA, MLflow parent/children, and --resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support import nested_runs

from orchestrator.cli import main
from orchestrator.sweep import STOP_AFTER_ENV

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _sweep(workdir: Path, *args: str, exit_code: int = 0) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = CliRunner().invoke(main, ["sweep", str(TINY), f"tracking.uri={uri}", "train.max_steps=20", *args])
    assert result.exit_code == exit_code, result.output + str(result.exception)
    parent = result.stdout.rsplit("MLflow parent run ", 1)[1].split()[0]
    return MlflowClient(tracking_uri=uri), parent


def _children(client: MlflowClient, parent: str) -> dict[str, object]:
    return {r.info.run_name: r for r in nested_runs(client, parent)}


def test_sweep_three_trials_with_asha(workdir: Path) -> None:
    # one trial at a time, the first with a good LR and the second with a hopeless one: at the first
    # rung (grace_period 1, one report) ASHA must stop the second, whose val_loss is far worse
    client, parent = _sweep(workdir, "sweep.num_samples=3", "sweep.max_concurrent_trials=1",
                            "sweep.space.train.lr={grid: [0.003, 0.000001]}")
    children = _children(client, parent)
    assert sorted(children) == ["tiny_000", "tiny_001", "tiny_002"]
    for run in children.values():
        assert "val_loss" in run.data.metrics and run.data.params["model.top_k"] in ("1", "2")
        assert run.info.status == "FINISHED"  # ASHA-stopped trials end early but cleanly
    assert children["tiny_000"].data.tags["moe_orch.status"] == "TERMINATED"
    assert children["tiny_001"].data.tags["moe_orch.status"] == "STOPPED"
    stopped_steps = [m.step for m in client.get_metric_history(children["tiny_001"].info.run_id, "val_loss")]
    assert stopped_steps == [10]  # stopped after its first report; the full run reports at 10 and 20
    artifacts = {f.path for f in client.list_artifacts(parent)}
    assert "summary.csv" in artifacts and "experiment.yaml" in artifacts
    rows = list(csv.DictReader((workdir / "ray_results/tiny/sweep/summary.csv").open()))
    assert [r["trial"] for r in rows] == ["tiny_000", "tiny_001", "tiny_002"]
    assert rows[1]["status"] == "STOPPED" and rows[1]["train.lr"] == "1e-06"
    assert {"model.top_k", "train.lr", "val_loss", "status", "wall_time_s"} <= set(rows[0])
    best = client.get_run(parent).data
    assert "best.trial" in best.params and "best_val_loss" in best.metrics


def test_sweep_resume_does_not_rerun_finished_trials(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("sweep.num_samples=3", "sweep.max_concurrent_trials=1", "sweep.scheduler=none")
    monkeypatch.setenv(STOP_AFTER_ENV, "1")  # Ctrl-C once the first trial has finished
    client, parent = _sweep(workdir, *args, exit_code=130)
    first = _children(client, parent)
    assert client.get_run(parent).info.status == "RUNNING"
    assert "tiny_000" in first and len(first) < 3
    trial0 = workdir / "ray_results/tiny/sweep/tiny_000"
    stamp = (trial0 / "timing.json").stat().st_mtime_ns
    checkpoints = sorted(p.name for p in (trial0 / "train").glob("checkpoint_*"))

    monkeypatch.delenv(STOP_AFTER_ENV)
    client, resumed_parent = _sweep(workdir, *args, "--resume")
    assert resumed_parent == parent
    children = _children(client, parent)
    assert sorted(children) == ["tiny_000", "tiny_001", "tiny_002"]
    assert children["tiny_000"].info.run_id == first["tiny_000"].info.run_id
    assert (trial0 / "timing.json").stat().st_mtime_ns == stamp  # trial 0 was not run again
    assert sorted(p.name for p in (trial0 / "train").glob("checkpoint_*")) == checkpoints
    assert client.get_run(parent).info.status == "FINISHED"
