"""``moe-orch evaluate`` end to end on a tiny trained checkpoint (real Ray, real MLflow sqlite store).

Also the end-of-run evaluation (``evaluate.at_end``) of a train run and of a two-objective
NSGA-II sweep whose second objective (bAbI accuracy) only the evaluation reports.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from trainables.more.evaluation import ARTIFACTS

MORE_EVAL = Path(__file__).resolve().parents[2] / "experiments" / "more_eval.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]
TINY = ["model.block_size=64", "model.d_model=32", "model.n_head=2", "model.expert_hidden=64", "model.n_layer=3",
        "train.max_steps=10", "train.eval_every=5", "train.batch_size=8", "train.warmup_steps=2"]
SMALL = ["babi_max_questions=8", "arith_n=4", "ppl_max_tokens=512", "generation_tokens=16", "routing_batches=1",
         "batch_size=16", "arith_long_digits=[4]"]
METRICS = ("wikitext_ppl", "wikitext_bpb", "babi_qa2_acc", "babi_qa3_acc", "arith_acc_in", "arith_acc_long",
           "eval_load_cv", "num_active_parameters")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the evaluation runs in this process: tiny matrices, a busy 2-core machine
    yield
    torch.set_num_threads(threads)


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.stdout


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, "evaluation")}


def test_train_with_evaluation_at_end_then_evaluate_run_and_checkpoint(workdir: Path) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    out = _invoke("train", str(MORE_EVAL), f"tracking.uri={uri}", "model.variant=more_b", *TINY,
                  *[f"evaluate.{s}" for s in SMALL])
    run_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    run = client.get_run(run_id)
    assert set(METRICS) <= set(run.data.metrics) and run.info.status == "FINISHED"
    assert _artifacts(client, run_id) == set(ARTIFACTS)  # routing_curves.png included: the run has a history
    assert [m.step for m in client.get_metric_history(run_id, "babi_qa2_acc")] == [10]

    # evaluate the run again, a subset of tasks, into --out: logged to the same run
    out_dir = workdir / "eval_out"
    out = _invoke("evaluate", run_id, "--tracking-uri", uri, "--tasks", "babi,routing", "--out", str(out_dir),
                  *SMALL, "babi_tasks=[3]")
    assert f"MLflow run: {run_id}" in out and "babi_qa3_acc" in out
    assert {p.name for p in out_dir.iterdir()} == {"metrics.json", "predictions.csv", "routing_sankey.html",
                                                   "routing_sankey.png", "expert_load.png", "routing_curves.png"}
    assert len(client.get_metric_history(run_id, "babi_qa3_acc")) == 2

    # a bare checkpoint directory: a new run in the moe-orch-evaluate experiment
    checkpoint = next((workdir / "ray_results" / "more_eval").glob("train-*/checkpoint_000010"))
    out = _invoke("evaluate", str(checkpoint), "--tracking-uri", uri, "--out", str(workdir / "bare"), *SMALL)
    new_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    new = client.get_run(new_id)
    assert new_id != run_id and new.info.status == "FINISHED" and new.data.params["model.variant"] == "more_b"
    assert client.get_experiment(new.info.experiment_id).name == "moe-orch-evaluate"
    assert set(METRICS) <= set(new.data.metrics)
    assert _artifacts(client, new_id) == set(ARTIFACTS) - {"routing_curves.png"}  # no training history
    saved = json.loads((workdir / "bare" / "metrics.json").read_text())
    assert saved["babi_qa2_acc"] == new.data.metrics["babi_qa2_acc"]


def test_two_objective_sweep_on_an_evaluation_metric(workdir: Path) -> None:
    uri = f"sqlite:///{workdir}/mlflow.db"
    out = _invoke("sweep", str(MORE_EVAL), f"tracking.uri={uri}", *TINY, "train.max_steps=6", "train.eval_every=3",
                  "sweep.num_samples=2", "sweep.space.model.variant={grid: [base, more_a]}",
                  *[f"evaluate.{s}" for s in SMALL], "evaluate.tasks=[babi]", "evaluate.babi_tasks=[2]")
    assert "babi_qa2_acc" in out and out.count("TERMINATED") == 2
    plots = workdir / "ray_results" / "more_eval" / "sweep" / "plots"
    assert (plots / "pareto_front.html").is_file()
    client = MlflowClient(tracking_uri=uri)
    parent = out.rsplit("MLflow parent run ", 1)[1].split()[0]
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 2 and all("babi_qa2_acc" in r.data.metrics for r in children)
    assert "pareto_front.html" in {Path(f.path).name for f in client.list_artifacts(parent, "plots")}
