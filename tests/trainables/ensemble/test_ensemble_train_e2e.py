"""``moe-orch train`` on a tiny Ensemble MoE experiment (real local Ray, real MLflow sqlite store),
then the run's checkpoint artifact reloads with identical outputs, and ``moe-orch serve --emit-config``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from support import SHARED_DATA

from orchestrator.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    from orchestrator.ray_runtime import TRAIN_ENV_DEFAULTS, start_local_ray

    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    start_local_ray(2)
    yield
    ray.shutdown()


def tiny_experiment(path: Path, experts: list[dict[str, Any]], uri: str) -> Path:
    doc = {
        "name": "ensemble-tiny", "family": "ensemble",
        "model": {"experts": experts, "max_length": 32, "top_k": 1, "max_train_examples": 96,
                  "max_eval_examples": 48},
        "data": {"dataset": "sst2", "root": str(SHARED_DATA)},
        "train": {"max_steps": 4, "batch_size": 16, "lr": 1e-3, "warmup_steps": 1, "eval_every": 2},
        "tracking": {"uri": uri},
        "sweep": {"metric": "val_accuracy", "mode": "max"},
        "serve": {"max_batch_size": 4, "max_texts_per_request": 3},
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_train_then_reload_and_emit_serve_config(local_ray: None, tiny_experts: list[dict[str, Any]],
                                                 tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from serve.resolve import resolve_target
    from trainables.ensemble.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    exp = tiny_experiment(tmp_path / "ensemble-tiny.yaml", tiny_experts, uri)
    result = CliRunner().invoke(main, ["train", str(exp)])
    assert result.exit_code == 0, result.output + str(result.exception)
    run_id = result.stdout.rsplit("MLflow run: ", 1)[1].split()[0]

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_accuracy"))
    assert steps == [2, 4]
    for key in ("val_acc/bert_wp", "val_acc/roberta_bpe", "gate/bert_wp/mean", "gate/roberta_bpe/p90",
                "val_gain_over_best", "val_best_expert_accuracy", "train_time_s"):
        assert key in run.data.metrics, key
    means = run.data.metrics["gate/bert_wp/mean"] + run.data.metrics["gate/roberta_bpe/mean"]
    assert means == pytest.approx(1.0, abs=1e-4)

    # the run id resolves to the checkpoint artifact, which reloads with the local checkpoint's outputs
    target = resolve_target(run_id, None, uri)
    assert target.source == {"run_id": run_id, "tracking_uri": uri, "artifact_path": "checkpoint"}
    assert target.settings.max_batch_size == 4 and target.settings.max_texts_per_request == 3  # from metadata
    local = resolve_target(str(exp), _load(exp), uri)
    texts = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés"]
    with torch.no_grad():
        a = load_checkpoint(target.local_dir)(texts, all_experts=True)
        b = load_checkpoint(local.local_dir)(texts, all_experts=True)
    assert torch.equal(a.log_probs, b.log_probs) and torch.equal(a.gate_weights, b.gate_weights)

    emitted = CliRunner().invoke(main, ["serve", run_id, "--tracking-uri", uri, "--emit-config", "serve.yaml",
                                        "--port", "8123"])
    assert emitted.exit_code == 0, emitted.output
    config = yaml.safe_load((tmp_path / "serve.yaml").read_text())
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    assert config["applications"][0]["args"]["run_id"] == run_id
    bad = CliRunner().invoke(main, ["serve", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "neither an experiment YAML" in bad.output


def _load(path: Path) -> Any:
    from orchestrator.config import load_experiment

    return load_experiment(path)
