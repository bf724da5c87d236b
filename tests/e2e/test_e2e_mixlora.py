"""The MixLoRA family end to end on a tiny random Llama: train (DDP, DeepSpeed ZeRO-2, gradient
accumulation), the adapter checkpoint in MLflow, lm-eval evaluation, streaming generation, and a
LoRA-vs-MixLoRA sweep; real CLI, real local Ray, real MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main

TINY = Path(__file__).resolve().parents[2] / "experiments" / "mixlora_tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.stdout


def _train(workdir: Path, *args: str) -> tuple[MlflowClient, str]:
    uri = f"sqlite:///{workdir}/mlflow.db"
    out = _invoke("train", str(TINY), f"tracking.uri={uri}", *args)
    return MlflowClient(tracking_uri=uri), out.rsplit("MLflow run: ", 1)[1].split()[0]


def test_train_evaluate_generate(workdir: Path) -> None:
    client, run_id = _train(workdir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.method"] == "mixlora"
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [2, 4]
    for key in ("tokens_per_s", "load_balance_loss", "routing/L0/entropy", "routing/L1/cv", "routing/L0/load/E3"):
        assert key in run.data.metrics, key
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoint")}
    assert {"config.json", "adapter_config.json", "adapter_model.safetensors", "mixlora.safetensors"} <= files

    uri = f"sqlite:///{workdir}/mlflow.db"
    out = _invoke("evaluate", run_id, "--tracking-uri", uri, "--limit", "4", "tasks=[arc_easy]")
    assert "arc_easy/acc" in out and f"MLflow run: {run_id}" in out
    metrics = client.get_run(run_id).data.metrics
    assert metrics["arc_easy/n"] == 4 and 0 <= metrics["arc_easy/acc"] <= 1 and "arc_easy/acc_norm_stderr" in metrics
    assert 0 < metrics["eval_router_entropy"] <= 1 and metrics["eval_load_cv"] >= 0
    pictures = {Path(f.path).name for f in client.list_artifacts(run_id, "evaluation")}
    assert {"metrics.json", "expert_load.png", "routing.json", "routing_curves.png"} <= pictures  # curves: history

    result = CliRunner().invoke(main, ["generate", run_id, "--tracking-uri", uri, "--prompt", "Hi",
                                       "--max-tokens", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["generate", "tiny-llama", "--prompt", "Hi", "--max-tokens", "3"])
    assert result.exit_code == 0, result.output  # a bare base, through the only family built on bases
    result = CliRunner().invoke(main, ["generate", str(workdir), "--prompt", "Hi"])
    assert result.exit_code == 2 and "not a checkpoint" in result.output


def test_deepspeed_zero2_with_two_workers(workdir: Path) -> None:
    client, run_id = _train(workdir, "scaling.num_workers=2", "scaling.strategy=deepspeed", "scaling.zero_stage=2",
                            "model.method=lora")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["scaling.zero_stage"] == "2"
    # tokens seen: 4 steps x 2 micro-batches x 2 workers x 4 examples, every token counted
    assert run.data.metrics["tokens_seen"] > 4 * 2 * 2 * 4 * 10
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoint")}
    assert "adapter_model.safetensors" in files and "mixlora.safetensors" not in files


def test_sweep_compares_lora_and_mixlora(workdir: Path) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    out = _invoke("sweep", str(TINY), f"tracking.uri={uri}", "evaluate.at_end=true", "evaluate.tasks=[arc_easy]",
                  "evaluate.limit=4")
    assert out.count("TERMINATED") == 2
    client = MlflowClient(tracking_uri=uri)
    parent = out.rsplit("MLflow parent run ", 1)[1].split()[0]
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.params["model.method"] for r in children) == ["lora", "mixlora"]
    assert all("arc_easy/acc" in r.data.metrics for r in children)
    for child in children:  # only MixLoRA has routers to draw
        pictures = {Path(f.path).name for f in client.list_artifacts(child.info.run_id, "evaluation")}
        assert ("expert_load.png" in pictures) == (child.data.params["model.method"] == "mixlora"), pictures


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_on_gpu(workdir: Path) -> None:
    client, run_id = _train(workdir, "scaling.use_gpu=true", "model.precision=bfloat16")
    assert client.get_run(run_id).info.status == "FINISHED"
