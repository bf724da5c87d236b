"""``moe-orch train`` end to end: DDP with 2 workers keeping its checkpoints in an object store (an
S3-compatible server, ``storage.path: s3://...``) and resuming from them, and DeepSpeed ZeRO-2 in a local
folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support import S3Server

from orchestrator.cli import main

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("s3", "local_ray")]  # credentials set before Ray starts


def _train(workdir: Path, *args: str) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{workdir}/mlflow.db"
    result = CliRunner().invoke(main, ["train", str(TINY), f"tracking.uri={uri}", *args])
    assert result.exit_code == 0, result.output + str(result.exception)
    run_id = result.stdout.rsplit("MLflow run: ", 1)[1].split()[0]
    return MlflowClient(tracking_uri=uri), run_id


def _check_run(client: MlflowClient, run_id: str, workers: int) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == str(workers)
    assert run.data.params["model.variant"] == "more_a"
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.5  # the loss falls
    routing = [k for k in run.data.metrics if k.startswith("routing/L0/S1/")]
    assert "routing/L0/S1/entropy" in routing and "routing/L0/S1/load/E3" in routing
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoint")}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "experiment.yaml" in {f.path for f in client.list_artifacts(run_id)}
    assert Path(run.info.artifact_uri).is_absolute() or run.info.artifact_uri.startswith("file:")


def test_train_ddp_two_workers_in_an_object_store(workdir: Path, s3: S3Server) -> None:
    prefix = f"train-{workdir.name}"
    client, run_id = _train(workdir, "scaling.num_workers=2", f"storage.path={s3.uri(prefix)}")
    _check_run(client, run_id, workers=2)  # the checkpoint artifact came from the bucket
    keys = s3.keys(prefix)
    assert any(k.endswith("/checkpoint_000030/model/model.safetensors") for k in keys), keys
    assert any(k.endswith("/mlflow_run_id") for k in keys), keys
    assert not (workdir / "ray_results").exists()  # nothing on the driver's disk

    # --resume continues the newest run (found in the bucket) from its last checkpoint (step 30) to the new
    # max_steps, in the same MLflow run (its id read back from the bucket)
    client, resumed = _train(workdir, "scaling.num_workers=2", f"storage.path={s3.uri(prefix)}",
                             "train.max_steps=40", "--resume")
    assert resumed == run_id
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert steps == [10, 20, 30, 40]
    assert any(k.endswith("/checkpoint_000040/model/config.json") for k in s3.keys(prefix))


def test_train_deepspeed_zero2(workdir: Path) -> None:
    client, run_id = _train(workdir, "scaling.num_workers=2", "scaling.strategy=deepspeed", "scaling.zero_stage=2")
    _check_run(client, run_id, workers=2)
    assert client.get_run(run_id).data.params["scaling.zero_stage"] == "2"
