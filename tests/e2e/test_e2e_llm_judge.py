"""The LLM-judge family end to end through the real CLI, a real local Ray and a real MLflow store, its
experts and judges behind a scripted OpenAI-compatible server (``tests/scripted_llm.py``): train (value
learning, per-iteration metrics, the candidates CSV), evaluate (selected vs random / best / oracle)
and a sweep over the tutorial's ranges."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from scripted_llm import ScriptedLLM
from support import SHARED_DATA

from orchestrator.cli import main

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "llm_judge.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM(SHARED_DATA) as server:
        yield server


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.stdout


def _overrides(llm: ScriptedLLM, uri: str) -> list[str]:
    return [f"tracking.uri={uri}", "model.backend=openai", f"model.base_url={llm.base_url}",
            "model.models=[oracle, wrong, broken]", "model.num_experts=4", "model.complete_output=false",
            "model.backoff_s=0.01", "model.reward_threshold=1000", "data.limit=6", "data.split=validation"]


def test_train_learns_values_and_evaluate_compares_with_baselines(workdir: Path, llm: ScriptedLLM) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    out = _invoke("train", str(EXPERIMENT), *_overrides(llm, uri), "train.max_steps=6", "train.eval_every=3",
                  "model.experts_per_query=null")
    run_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["moe_orch.family"] == "llm_judge"
    for key in ("selected_expert", "judge_score", "intrinsic_reward", "external_reward", "exploration_rate",
                "tokens", "iteration_s", "value/E3"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4, 5, 6], key
    assert [m.value for m in client.get_metric_history(run_id, "exploration_rate")] == pytest.approx(
        [1.0, 2 / 3, 1 / 3, 0.1, 0.1, 0.1])

    folder = Path(client.download_artifacts(run_id, "checkpoint", str(workdir / "ck")))
    manifest = json.loads((folder / "config.json").read_text())
    models = [e["model"] for e in manifest["team"]["experts"]]
    state = json.loads((folder / "state.json").read_text())
    rows = list(csv.DictReader(io.StringIO((folder / "candidates.csv").read_text())))
    assert len(rows) == 6 * 4 and state["iterations"] == 6
    oracles = {i for i, m in enumerate(models) if m == "oracle"}
    assert oracles, models  # seed 0 draws at least one oracle among 4 experts of 3 models
    for it in range(6):
        selected = [int(r["expert"]) for r in rows if int(r["iteration"]) == it and r["selected"] == "True"]
        assert len(selected) == 1 and selected[0] in oracles  # the judges pick the right answer
        assert all(r["error"] for r in rows if int(r["iteration"]) == it and models[int(r["expert"])] == "broken")
    assert run.data.metrics["accuracy"] == 1.0
    # repetition_rule is off in the experiment: the credit goes to the selected (oracle) experts
    assert max(range(4), key=lambda e: state["values"][e]) in oracles
    assert all(state["values"][e] == 0.0 for e in range(4) if e not in oracles)

    out = _invoke("evaluate", run_id, "--tracking-uri", uri, "limit=4")
    metrics = client.get_run(run_id).data.metrics
    share = len(oracles) / 4
    assert metrics["arc_easy/oracle_acc"] == 1.0 and metrics["arc_easy/selected_acc"] == 1.0
    assert metrics["arc_easy/random_expert_acc"] == pytest.approx(share)
    assert metrics["arc_easy/best_expert_acc"] == 1.0 and metrics["arc_easy/top_value_expert_acc"] == 1.0
    assert metrics["arc_easy/calls_per_question"] > 4 and metrics["arc_easy/tokens_per_question"] > 0
    # paired against a random expert: every question gains 1 - share, so the interval is that point
    for key in ("selected_minus_random", "selected_minus_random_ci_low", "selected_minus_random_ci_high",
                "top_value_minus_random"):
        assert metrics[f"arc_easy/{key}"] == pytest.approx(1 - share), key
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "evaluation")}
    assert {"arc_easy_table.md", "arc_easy_questions.csv", "arc_easy_candidates.csv", "metrics.json",
            "arc_easy_value_curve.csv", "arc_easy_value_curve.png"} <= files
    assert len(state["value_history"]) == 6 and state["value_history"][-1] == pytest.approx(state["values"])
    curve = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(
        run_id, "evaluation/arc_easy_value_curve.csv", str(workdir / "curve"))).read_text())))
    assert [int(r["iteration"]) for r in curve] == [1, 2, 3, 4, 5, 6]
    assert int(curve[-1]["top_value_expert"]) in oracles and float(curve[-1]["top_value_expert_acc"]) == 1.0
    assert all(float(r["random_expert_acc"]) == pytest.approx(share) for r in curve)


def test_sweep_tunes_the_tutorials_ranges(workdir: Path, llm: ScriptedLLM) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    out = _invoke("sweep", str(EXPERIMENT), *_overrides(llm, uri), "train.max_steps=2", "train.eval_every=2",
                  "sweep.num_samples=2", "sweep.max_concurrent_trials=2")
    client = MlflowClient(tracking_uri=uri)
    parent = out.rsplit("MLflow parent run ", 1)[1].split()[0]
    trials = client.search_runs([client.get_run(parent).info.experiment_id],
                                f"tags.mlflow.parentRunId = '{parent}'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    for trial in trials:
        params = trial.data.params
        assert 3 <= int(params["model.num_experts"]) <= 12 and 0.05 <= float(params["model.learning_rate"]) <= 0.5
        assert 0.8 <= float(params["model.discount_factor"]) <= 0.99
        assert 0.05 <= float(params["model.exploration_rate"]) <= 0.5
        assert trial.data.metrics["step"] == 2 and 0 <= trial.data.metrics["accuracy"] <= 1
