"""A sweep with ``storage.path`` in an object store: an S3-compatible server (moto) read through pyarrow,
as a cluster would use S3 or GCS. Tune's state, the trials' checkpoints, their run-id and result files and
the summary live in the bucket, an interrupted sweep ``--resume``s from the bucket alone, and nothing lands
on the driver's disk. (``train`` in a bucket, with ``--resume``: ``test_e2e_train.py``.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support import S3Server, nested_runs

from orchestrator.cli import main
from orchestrator.sweep import STOP_AFTER_ENV

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("s3", "local_ray")]  # credentials set before Ray starts


def _cli(workdir: Path, command: str, storage: str, *args: str, exit_code: int = 0) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = CliRunner().invoke(main, [command, str(TINY), f"tracking.uri={uri}", f"storage.path={storage}",
                                       "train.max_steps=20", *args])
    assert result.exit_code == exit_code, result.output + str(result.exception)
    marker = "MLflow run: " if command == "train" else "MLflow parent run "
    return MlflowClient(tracking_uri=uri), result.stdout.rsplit(marker, 1)[1].split()[0]


def test_an_interrupted_sweep_resumes_from_the_bucket(workdir: Path, s3: S3Server,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"sweep-{workdir.name}"
    args = ("sweep.num_samples=2", "sweep.max_concurrent_trials=1", "sweep.scheduler=none")
    monkeypatch.setenv(STOP_AFTER_ENV, "1")  # Ctrl-C once the first trial has finished
    client, parent = _cli(workdir, "sweep", s3.uri(prefix), *args, exit_code=130)
    trial0 = f"{s3.bucket}/{prefix}/tiny/sweep/tiny_000"
    fs = s3.filesystem()
    with fs.open_input_stream(f"{trial0}/timing.json") as f:
        timing = f.read()
    keys = s3.keys(prefix)
    assert f"{trial0}/train/checkpoint_000020/model/config.json" in keys, keys
    assert f"{s3.bucket}/{prefix}/tiny/sweep/mlflow_parent_run_id" in keys

    monkeypatch.delenv(STOP_AFTER_ENV)
    client, resumed = _cli(workdir, "sweep", s3.uri(prefix), *args, "--resume")
    assert resumed == parent
    children = nested_runs(client, parent)
    assert sorted(r.info.run_name for r in children) == ["tiny_000", "tiny_001"]
    assert all("checkpoint" in {f.path for f in client.list_artifacts(r.info.run_id)} for r in children)
    with fs.open_input_stream(f"{trial0}/timing.json") as f:
        assert f.read() == timing  # trial 0 was not run again
    with fs.open_input_stream(f"{s3.bucket}/{prefix}/tiny/sweep/tiny_001/final.json") as f:
        assert json.loads(f.read())["step"] == 20
    assert f"{s3.bucket}/{prefix}/tiny/sweep/summary.csv" in s3.keys(prefix)
    assert client.get_run(parent).info.status == "FINISHED"
    assert not (workdir / "ray_results").exists()
