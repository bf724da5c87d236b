"""An LM checkpoint (a tiny DyLoRA-MoE pool) served on Ray Serve behind OpenAI's API, driven by the
official ``openai`` client over real HTTP: completions, chat, streaming, batching, errors."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
import torch

from orchestrator.registry import family_ref
from trainables.lm.sections import LMServe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("local_ray")]


@pytest.fixture(scope="module")
def pool_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-llama pool of two DyLoRA experts with distinct prototypes and non-zero weights."""
    from trainables.dylora.checkpoint import save_pool
    from trainables.dylora.config import DyLoRAConfig
    from trainables.dylora.experts import DyLoRAModel, ExpertManager
    from trainables.lm.base import load_base

    cfg = DyLoRAConfig(max_experts=2, rank=4, router_temperature=0.1)
    base, tokenizer = load_base("tiny-llama")
    model = DyLoRAModel(base, cfg)
    model.set_template(tokenizer)
    manager = ExpertManager(model, cfg)
    torch.manual_seed(0)
    manager.add_expert(0, prototype=torch.randn(model.config.hidden_size))
    manager.add_expert(3, prototype=torch.randn(model.config.hidden_size))
    with torch.no_grad():
        for layer in model.expert_linears():
            for slot in (0, 1):
                layer.lora_B[slot].normal_(0, 0.05)
    directory = tmp_path_factory.mktemp("lm_pool") / "model"
    return save_pool(model, manager, None, cfg, directory, {"step": 7, "experiment": "pool-test"})


@pytest.fixture(scope="module")
def lm_url(pool_checkpoint: Path, free_port: int) -> Iterator[str]:
    from serve.app import shutdown, start

    settings = LMServe(port=free_port, max_batch_size=8, max_tokens_limit=64, min_replicas=1, max_replicas=1,
                       access_log=False)
    url = start({"checkpoint": str(pool_checkpoint)}, family_ref("dylora"), "lm-test", settings)
    yield url
    shutdown()


@pytest.fixture()
def client(lm_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lm_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_completions_chat_and_streaming_through_the_openai_client(client: openai.OpenAI, lm_url: str) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["pool-test"]

    done = client.completions.create(model="pool-test", prompt="def add(a, b):", max_tokens=12, temperature=0)
    choice = done.choices[0]
    assert choice.finish_reason in ("stop", "length") and isinstance(choice.text, str)
    assert done.usage.completion_tokens <= 12 and done.usage.prompt_tokens == len("def add(a, b):")  # byte tokens
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    experts = choice.model_extra["moe"]["experts"]
    assert set(experts) <= {"E0", "E1"} and sum(experts.values()) == pytest.approx(1, abs=1e-3)

    chat = client.chat.completions.create(model="pool-test", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=10, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    pieces = list(client.chat.completions.create(model="pool-test", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=10, temperature=0, stream=True))
    assert "".join(p.choices[0].delta.content or "" for p in pieces) == chat.choices[0].message.content
    assert pieces[-1].choices[0].finish_reason == chat.choices[0].finish_reason

    raw = requests.post(f"{lm_url}/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=60)
    assert raw.status_code == 200 and raw.headers["x-moe-orch-model-version"] == "7"


def test_sampling_is_seeded_and_n_gives_several_choices(client: openai.OpenAI) -> None:
    ask = lambda seed: client.completions.create(model="pool-test", prompt="abc", max_tokens=8, temperature=1.0,
                                                 seed=seed, n=2)
    first, again = ask(5), ask(5)
    assert [c.text for c in first.choices] == [c.text for c in again.choices] and len(first.choices) == 2


def test_concurrent_requests_are_decoded_together(client: openai.OpenAI, lm_url: str) -> None:
    prompts = [f"request number {i} says" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda p: client.completions.create(model="pool-test", prompt=p, max_tokens=24,
                                                                    temperature=0), prompts))
    assert all(a.choices[0].finish_reason in ("stop", "length") for a in answers)
    health = requests.get(f"{lm_url}/healthz", timeout=30).json()
    assert health["max_running"] > 1  # the engine decoded several sequences in one batch


def test_bad_requests_get_openai_errors_and_the_server_lives(client: openai.OpenAI, lm_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="pool-test", prompt="x", max_tokens=1000)
    assert info.value.body["param"] == "max_tokens" and info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-5", prompt="x", max_tokens=2)
    for body in ({}, {"prompt": ""}, {"prompt": 3}, {"prompt": "x", "temperature": -1}, {"messages": []}):
        reply = requests.post(f"{lm_url}/v1/completions", json=body, timeout=60)
        assert reply.status_code == 400 and set(reply.json()["error"]) >= {"message", "type", "param"}, body
    reply = requests.post(f"{lm_url}/v1/chat/completions", data=b"{not json", timeout=60,
                          headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert client.completions.create(model="pool-test", prompt="still alive", max_tokens=2).choices[0].finish_reason
