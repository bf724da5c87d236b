"""The DyLoRA-MoE family end to end on a tiny random Llama: the whole stream in one Ray Train run (two DDP
workers), every phase's checkpoint in the MLflow Model Registry, the continual-learning metrics and
pictures, and ``--resume`` continuing mid-stream with the same pool; real CLI, real local Ray, real
MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from trainables.dylora.checkpoint import load_pool

TINY = Path(__file__).resolve().parents[2] / "experiments" / "dylora_tiny.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
THREE_PHASES = ("data.phases=[{skill: python_basics, steps: 6}, {skill: web_requests, steps: 6}, "
                "{skill: sql, steps: 6}]")


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.stdout


def test_stream_registers_phases_and_resumes_mid_stream(workdir: Path) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    # two DDP workers; a random model's loss barely moves, so any change counts as novel
    out = _invoke("train", str(TINY), f"tracking.uri={uri}", "tracking.registered_model=dylora-e2e",
                  "scaling.num_workers=2", "model.loss_z_threshold=0.01")
    run_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    client = MlflowClient(tracking_uri=uri)
    metrics = client.get_run(run_id).data.metrics
    for key in ("skill/python_basics/acc", "skill/web_requests/ppl", "mbpp/pass_at_1", "humaneval/pass_at_1",
                "cl/avg_final", "cl/bwt", "cl/forgetting", "dylora/num_experts", "dylora/detection_delay_1"):
        assert key in metrics, key
    assert metrics["mbpp/pass_at_1"] == 0.0  # a random model: honest zero
    assert metrics["mbpp/n_problems"] == 2  # split across the two ranks and merged: each problem once
    assert [m.step for m in client.get_metric_history(run_id, "registry/phase")] == [6, 12]

    # each phase end is a version of the registered model, tagged; the alias follows the newest
    versions = sorted(client.search_model_versions("name='dylora-e2e'"), key=lambda v: int(v.version))
    assert [(v.tags["phase"], v.tags["step"]) for v in versions] == [("1", "6"), ("2", "12")]
    assert client.get_model_version_by_alias("dylora-e2e", "current").version == versions[-1].version
    local = Path(client.download_artifacts(run_id, "registered/step_000012", str(workdir / "v2")))
    model, _, manifest = load_pool(local)
    experts = manifest.extra["num_experts"]
    assert experts >= 2 and versions[-1].tags["experts"] == str(experts) and model.router.num_active == experts

    pictures = {Path(f.path).name for f in client.list_artifacts(run_id, "evaluation")}
    assert {"accuracy_matrix.png", "expert_lifecycle.png", "continual.json"} <= pictures
    continual_file = client.download_artifacts(run_id, "evaluation/continual.json", str(workdir))
    continual = json.loads(Path(continual_file).read_text())
    assert [r["phase"] for r in continual["rows"]] == [0, 1, 2]  # the base, then each phase
    assert len(continual["matrix_acc"]["scores"]) == 2

    # --resume with the stream grown by a phase: same run, the pool restored, the new phase registered
    out = _invoke("train", str(TINY), "--resume", f"tracking.uri={uri}", "tracking.registered_model=dylora-e2e",
                  "model.loss_z_threshold=0.01", THREE_PHASES, "train.max_steps=18")
    assert f"MLflow run: {run_id}" in out
    run = client.get_run(run_id)
    assert run.data.metrics["resumed_from_step"] == 12 and run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "dylora/num_experts")
    assert [m.step for m in history] == [3, 6, 9, 12, 15, 18]
    assert next(m.value for m in history if m.step == 15) >= experts  # the pool came back whole
    versions = client.search_model_versions("name='dylora-e2e'")
    assert sorted(v.tags["phase"] for v in versions) == ["1", "2", "3"]

