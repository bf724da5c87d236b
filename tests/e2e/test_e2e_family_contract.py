"""A family declared in the tests (``tests/example_family``) plugs in for validate, train, evaluate and
sweep through its declaration and one ``register`` call: real CLI, real local Ray, real MLflow store."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from orchestrator.cli import main

TESTS = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A local Ray whose workers can import ``example_family`` (from tests/, like a user's own package)."""
    import ray

    from orchestrator.ray_runtime import TRAIN_ENV_DEFAULTS, start_local_ray
    from orchestrator.registry import register

    sys.path.insert(0, str(TESTS))
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), saved) if p)
    register("example_family.family:FAMILY")
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    start_local_ray(2)
    yield
    ray.shutdown()
    os.environ.pop("PYTHONPATH") if saved is None else os.environ.__setitem__("PYTHONPATH", saved)


def _experiment(tmp_path: Path, **sections: dict) -> Path:
    doc = {"name": "toy", "family": "toy", "model": {"dim": 4}, "data": {"noise": 0.01},
           "train": {"max_steps": 40, "batch_size": 32, "lr": 0.2, "warmup_steps": 1, "eval_every": 20,
                     "weight_decay": 0.0},
           "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
           "sweep": {"metric": "val_loss", "mode": "min", "num_samples": 2, "scheduler": "none",
                     "space": {"train.lr": {"choice": [0.1, 0.2]}}},
           **sections}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.stdout


def test_example_family_validates_trains_evaluates_and_sweeps(local_ray: None, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = _experiment(tmp_path, evaluate={"at_end": True, "examples": 64})
    assert "family: toy" in _invoke("validate", str(exp))

    out = _invoke("train", str(exp), "train.grad_accum_steps=2")  # 2 micro-batches of 32 per step
    run_id = out.rsplit("MLflow run: ", 1)[1].split()[0]
    run = client.get_run(run_id)
    assert run.data.metrics["examples_seen"] == 40 * 2 * 32
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)]
    assert len(losses) == 2 and losses[-1] < 0.5 * losses[0]  # the shared loop trained it
    assert "test_mse" in run.data.metrics and "examples_per_s" in run.data.metrics  # evaluate.at_end ran
    assert run.data.params["model.dim"] == "4" and run.data.tags["moe_orch.family"] == "toy"

    # moe-orch evaluate on the run id: the toy evaluator, logged into the same run
    out = _invoke("evaluate", run_id, "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "examples=32")
    assert "test_mse" in out and f"MLflow run: {run_id}" in out
    assert len(client.get_metric_history(run_id, "test_mse")) == 2

    out = _invoke("sweep", str(exp), "evaluate.at_end=false")
    assert out.count("TERMINATED") == 2 and "best: toy_00" in out


@pytest.mark.parametrize("override, expected", [
    ("scaling.strategy=deepspeed", "scaling.strategy: got 'deepspeed', expected one of ddp (what family toy supports)"),
    ("serve.port=8000", "serve: got a section, expected none (family toy has no serve app)"),
    ("model.dim=0", "model.dim: got 0, expected >= 1"),
    ("sweep.metric=test_mse", "sweep.metric: got 'test_mse', an evaluation metric, expected evaluate.at_end: true"),
])
def test_example_family_is_validated_by_its_declaration(local_ray: None, tmp_path: Path, override: str,
                                                        expected: str) -> None:
    result = CliRunner().invoke(main, ["validate", str(_experiment(tmp_path)), override])
    assert result.exit_code == 2 and expected in result.stderr, result.output
