"""GPUs for Serve replicas: ``serve.num_gpus_per_replica`` reaches the deployment's ``ray_actor_options``
(through the real options builder and Ray Serve's own config schema), nothing asks for a GPU by default,
and a family that serves on CPU only refuses it. The ``gpu`` test serves an LM checkpoint from a replica
that holds a GPU and answers over HTTP from CUDA in bfloat16 (``make gpu-check``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from support import save_tiny_pool

from orchestrator.contract import ServeSection
from orchestrator.registry import family_ref
from serve.app import ModelServer, deployment_options, serve_config
from trainables.lm.sections import LMServe
from trainables.openmp import decode_env


def _deployment(settings: ServeSection) -> dict[str, Any]:
    """The deployment of ``serve_config``, as Ray Serve's own schema reads it."""
    from ray.serve.schema import ServeDeploySchema

    config = serve_config({"checkpoint": "/ckpt"}, family_ref("dylora"), "app", settings)
    schema = ServeDeploySchema.model_validate(config)
    return schema.applications[0].deployments[0].model_dump(exclude_unset=True)


def test_num_gpus_per_replica_reaches_the_replicas_ray_actor_options() -> None:
    settings = LMServe(num_gpus_per_replica=0.5, num_cpus_per_replica=2)
    env = {"runtime_env": {"env_vars": decode_env()}}
    assert deployment_options(settings)["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.5, **env}
    bound = ModelServer.options(**deployment_options(settings))  # what build_app binds
    assert bound.ray_actor_options["num_gpus"] == 0.5 and bound.ray_actor_options["num_cpus"] == 2.0
    assert _deployment(settings)["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.5, **env}
    assert settings.device == "cuda"


@pytest.mark.parametrize("settings", [ServeSection(), LMServe()], ids=["serve", "lm"])
def test_nothing_asks_for_a_gpu_by_default(settings: ServeSection) -> None:
    assert settings.num_gpus_per_replica == 0 and settings.device == "cpu"
    assert deployment_options(settings)["ray_actor_options"] == {"num_cpus": 1.0,
                                                                  "runtime_env": {"env_vars": decode_env()}}
    assert "num_gpus" not in _deployment(settings)["ray_actor_options"]


def test_the_setting_names_its_field() -> None:
    assert ServeSection(num_gpus_per_replica=-1).errors() == ["num_gpus_per_replica: got -1, expected >= 0"]
    assert LMServe(weights="int8", num_gpus_per_replica=1).errors() == [
        "weights: got 'int8', expected 'fp32' with serve.num_gpus_per_replica > 0 (int8 weights run on CPU)"]


def test_serving_a_cpu_only_family_on_a_gpu_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from serve.run import ServeError, serve_target

    with pytest.raises(ServeError, match=r"serve.num_gpus_per_replica: got 1, expected 0 \(family ensemble "
                                         r"serves on cpu only\)") as info:
        serve_target(str(tiny_checkpoint), None, ("serve.num_gpus_per_replica=1",), str(tmp_path / "serve.yaml"),
                     None, None, None, None)
    assert info.value.exit_code == 2


def test_a_gpu_replicas_emitted_config_asks_for_its_gpu(tmp_path: Path) -> None:
    import yaml

    from serve.run import serve_target

    pool = save_tiny_pool(tmp_path / "pool", seed=0, step=1)
    serve_target(str(pool), None, ("serve.num_gpus_per_replica=1",), str(tmp_path / "serve.yaml"), None, None, None,
                 None, echo=lambda _: None)
    deployment = yaml.safe_load((tmp_path / "serve.yaml").read_text())["applications"][0]["deployments"][0]
    assert deployment["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0,
                                               "runtime_env": {"env_vars": decode_env()}}


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.usefixtures("local_ray")
def test_a_replica_holding_a_gpu_answers_over_http_from_cuda_in_bfloat16(tmp_path: Path, free_port: int) -> None:
    import ray

    from serve.app import shutdown, start

    pool = save_tiny_pool(tmp_path / "pool", seed=0, step=3)
    settings = LMServe(port=free_port, min_replicas=1, max_replicas=1, num_gpus_per_replica=1, max_tokens_limit=16,
                       access_log=False)
    url = start({"checkpoint": str(pool)}, family_ref("dylora"), "gpu-test", settings)
    try:
        held = ray.cluster_resources().get("GPU", 0) - ray.available_resources().get("GPU", 0)
        assert held >= 1  # Ray gave the replica its GPU
        health = requests.get(f"{url}/healthz", timeout=30).json()
        assert health["device"] == "cuda" and health["dtype"] == "bfloat16"
        answer = requests.post(f"{url}/v1/completions", json={"prompt": "def f(", "max_tokens": 4, "temperature": 0},
                               timeout=120)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1
        chat = requests.post(f"{url}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0.7, "seed": 1})
        assert chat.status_code == 200, chat.text
    finally:
        shutdown()
