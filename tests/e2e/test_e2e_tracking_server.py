"""Tracking against a real ``mlflow server`` with proxied artifacts, as on a cluster: ``tracking.uri:
http://<host>:5000``. Runs, metric histories, artifacts (the checkpoint) and sweep trials all reach the
one server over HTTP; the artifacts land in the server's ``--artifacts-destination``; nothing writes an
MLflow store (``mlflow.db``, ``mlruns/``, ``mlartifacts/``) in the working folder; and a run's checkpoint
comes back through the server alone, as ``moe-orch serve | evaluate <run id>`` fetch it on any machine.
(The model registry and ``serve --follow`` against the server: tests/serve/test_serve_lm.py.)"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support import MlflowServer, nested_runs, unused_port

from orchestrator.cli import main

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
LOCAL_STORES = ("mlflow.db", "mlruns", "mlartifacts")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    found = MlflowServer(tmp_path_factory.mktemp("mlflow_server"), unused_port())
    yield found
    found.stop()


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.output


def test_a_train_run_logs_to_the_server_and_its_checkpoint_comes_back_through_it(server: MlflowServer,
                                                                                  workdir: Path) -> None:
    from serve.app import fetch_checkpoint
    from trainables.training.manifest import read_manifest

    out = _invoke("train", str(TINY), f"tracking.uri={server.url}")
    run_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    client = MlflowClient(tracking_uri=server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [10, 20, 30]
    assert {"checkpoint", "experiment.yaml"} <= {f.path for f in client.list_artifacts(run_id)}
    stored = list(server.artifacts.rglob(f"{run_id}/artifacts/checkpoint/config.json"))
    assert stored, "the checkpoint did not land in the server's --artifacts-destination"
    assert not [name for name in LOCAL_STORES if (workdir / name).exists()]  # no store of its own

    # what a Serve replica or `moe-orch evaluate <run id>` does on any machine: download through the server
    checkpoint, download = fetch_checkpoint({"run_id": run_id, "tracking_uri": server.url})
    try:
        assert (checkpoint / "config.json").read_bytes() == stored[0].read_bytes()
        assert read_manifest(checkpoint).family == "more"
    finally:
        shutil.rmtree(download)


def test_every_sweep_trial_reports_to_the_one_server(server: MlflowServer, workdir: Path) -> None:
    out = _invoke("sweep", str(TINY), f"tracking.uri={server.url}", "train.max_steps=20", "sweep.num_samples=2",
                  "sweep.scheduler=none", "sweep.max_concurrent_trials=2")
    parent = out.rsplit("MLflow parent run ", 1)[1].split()[0]
    client = MlflowClient(tracking_uri=server.url)
    children = nested_runs(client, parent)
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")] == [10, 20]
    assert "summary.csv" in {f.path for f in client.list_artifacts(parent)}
    assert list(server.artifacts.rglob(f"{parent}/artifacts/summary.csv"))
    assert not [name for name in LOCAL_STORES if (workdir / name).exists()]
