"""The LLM judge's local models on a GPU (``model.local_gpus``): the setting validates, each model's actor asks
Ray for GPUs only when it is above 0 (the default keeps every actor on CPU, as before), and a local model runs
where it was put. The ``gpu`` test loads a model in a Ray actor holding a GPU (``make gpu-check``)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from trainables.llm_judge.backends import LocalBackend, LocalLM
from trainables.llm_judge.config import JudgeConfig

SAMPLING = {"max_tokens": 3, "temperature": 0.0, "top_p": 1.0}
MESSAGES = [{"role": "user", "content": "Say hi"}]


def test_local_gpus_validates_and_defaults_to_none() -> None:
    assert JudgeConfig().local_gpus == 0
    assert JudgeConfig(local_gpus=-1.0).errors() == ["local_gpus: got -1.0, expected >= 0"]
    assert JudgeConfig(local_gpus=0.5).errors() == []


def test_an_actor_asks_for_gpus_only_when_configured() -> None:
    assert LocalBackend.actor_options(1.0, 0.0) == {"num_cpus": 1.0, "max_concurrency": 256}  # the default
    assert LocalBackend.actor_options(2.0, 0.5) == {"num_cpus": 2.0, "num_gpus": 0.5, "max_concurrency": 256}


def test_a_local_model_outside_ray_stays_on_cpu_by_default() -> None:
    lm = LocalLM("tiny-llama", threads=1)
    try:
        assert lm.placement() == {"device": "cpu", "dtype": "float32"}
        answer = asyncio.run(lm.chat(MESSAGES, SAMPLING, seed=0))
        assert answer["completion_tokens"] == 3
    finally:
        lm.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpus_outside_ray_without_cuda_are_refused() -> None:
    import ray

    assert not ray.is_initialized()
    with pytest.raises(ValueError, match=r"model.local_gpus: got 1.0, expected 0 here: no CUDA device"):
        LocalBackend(["tiny-llama"], cpus=1.0, gpus=1.0)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_judge_model_actor_holding_a_gpu_answers_from_cuda_in_bfloat16() -> None:
    import ray

    from orchestrator.ray_runtime import start_local_ray

    started = not ray.is_initialized()
    if started:
        start_local_ray(2)
    backend = LocalBackend(["tiny-llama"], cpus=1.0, gpus=1.0)
    try:
        actor = backend.actors["tiny-llama"]
        assert ray.get(actor.placement.remote(), timeout=300) == {"device": "cuda", "dtype": "bfloat16"}
        assert ray.cluster_resources()["GPU"] - ray.available_resources().get("GPU", 0) >= 1  # the actor's GPU
        answer = asyncio.run(backend.chat("tiny-llama", MESSAGES, SAMPLING, seed=0))
        assert answer.completion_tokens == 3
    finally:
        asyncio.run(backend.aclose())
        if started:
            ray.shutdown()
