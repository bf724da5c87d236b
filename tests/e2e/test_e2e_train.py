"""``moe-orch train`` end to end: DDP with 2 workers, DeepSpeed ZeRO-2, and --resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


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


def test_train_ddp_two_workers(workdir: Path) -> None:
    client, run_id = _train(workdir, "scaling.num_workers=2")
    _check_run(client, run_id, workers=2)

    # --resume continues the newest run from its last checkpoint (step 30) to the new max_steps
    client, resumed = _train(workdir, "scaling.num_workers=2", "train.max_steps=40", "--resume")
    assert resumed == run_id
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert steps == [10, 20, 30, 40]


def test_train_deepspeed_zero2(workdir: Path) -> None:
    client, run_id = _train(workdir, "scaling.num_workers=2", "scaling.strategy=deepspeed", "scaling.zero_stage=2")
    _check_run(client, run_id, workers=2)
    assert client.get_run(run_id).data.params["scaling.zero_stage"] == "2"
