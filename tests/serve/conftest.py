"""A tiny Ensemble MoE checkpoint logged to a temp MLflow store, and a local Ray for the Serve tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from support import SHARED_DATA


@pytest.fixture(scope="module")
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved ensemble of two tiny from-config experts (random weights: serving does not need accuracy)."""
    import torch

    from trainables.ensemble.checkpoint import save_checkpoint
    from trainables.ensemble.config import EnsembleConfig
    from trainables.ensemble.data import load_sst2, subset
    from trainables.ensemble.experts import export_experts, small_expert_specs
    from trainables.ensemble.model import EnsembleMoE

    root = tmp_path_factory.mktemp("serve_ckpt")
    texts = [t for t, _ in subset(load_sst2("train", SHARED_DATA), 1000, 0)]
    experts = export_experts(small_expert_specs(vocab_size=1000), root / "experts", texts)
    torch.manual_seed(0)
    model = EnsembleMoE.build(EnsembleConfig(experts=experts, max_length=32)).eval()
    return save_checkpoint(model, root / "model", {"step": 0, "serve": {"max_texts_per_request": 4}})


@pytest.fixture(scope="session")
def logged_run(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``{"run_id", "tracking_uri"}`` of an MLflow run whose ``checkpoint`` artifact is the tiny checkpoint."""
    from orchestrator.tracking import Store

    store = Store.at(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    run = store.start_run(store.experiment_id("serve-test"), "serve-test/run")
    run.log_artifacts(tiny_checkpoint, "checkpoint")
    run.end()
    return {"run_id": run.run_id, "tracking_uri": store.uri}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    from orchestrator.contract import ServeSection
    from orchestrator.ray_runtime import start_local_ray
    from serve.app import ray_env

    os.environ.setdefault("MOE_ORCH_DATA", str(SHARED_DATA))
    for key, value in ray_env(ServeSection()).items():  # the start-up and health-check timeouts of the defaults
        os.environ.setdefault(key, value)
    start_local_ray(2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def load_batch_sizes() -> Callable[[str, list[str], int, int], list[int]]:
    """``batch_sizes_under_load`` below, for tests."""
    return batch_sizes_under_load


def batch_sizes_under_load(predict_url: str, texts: list[str], requests_total: int, workers: int) -> list[int]:
    """``batch_size`` of each of ``requests_total`` one-text requests sent by ``workers`` threads at once."""

    def one(i: int) -> int:
        reply = requests.post(predict_url, json={"texts": [f"{texts[i % len(texts)]} {i}"]}, timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()["batch_size"]

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(requests_total)))
