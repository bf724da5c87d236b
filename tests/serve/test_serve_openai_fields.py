"""The OpenAI fields that clients rely on, over real HTTP with real clients (issue 28, part 6): the LM app
(``serve.app.replica_app``, what each replica serves) under uvicorn on 127.0.0.1 in a thread, driven by the
``openai`` package, ``requests`` and lm-evaluation-harness's ``local-completions`` model.

The model is the plain tiny random Llama (``load_lm`` is replaced for this module): a pool that routes per
sequence (DyLoRA) routes lm-eval's echoed prompt on all its tokens, while in-process scoring routes the
window without its last token, so only a model without per-prompt routing can agree to float precision.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import torch
import uvicorn
from support import SHARED_DATA, raw_post, unused_port, wait_for

NAME = "tiny"


@dataclass
class Served:
    url: str
    endpoint: Any  # LMEndpoint
    model: Any
    tokenizer: Any

    @property
    def engine(self) -> Any:
        return self.endpoint.current.engine

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from serve.app import replica_app
    from trainables.lm import serving
    from trainables.lm.base import tiny_llama
    from trainables.lm.sections import LMServe

    model, tokenizer = tiny_llama()
    info = {"name": NAME, "family": "lm", "version": "1", "base": "tiny-llama", "experts": None}
    patch = pytest.MonkeyPatch()
    patch.setattr(serving, "load_lm", lambda _: (model, tokenizer, dict(info)))
    settings = LMServe(max_tokens_limit=1000, max_n=3, max_batch_size=8, max_body_bytes=1 << 20)
    endpoint = serving.LMEndpoint(tmp_path_factory.mktemp("unused"), settings)
    port = unused_port()
    server = uvicorn.Server(uvicorn.Config(replica_app(endpoint, settings, None, lambda: {}), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30)
        yield Served(f"http://127.0.0.1:{port}", endpoint, model, tokenizer)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        endpoint.current.engine.close()
        patch.undo()


@pytest.fixture()
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=60)


def log_softmax(served: Served, tokens: list[int]) -> torch.Tensor:
    """(T, V): position t's log-probs of token t + 1, by one forward in this process."""
    with torch.no_grad():
        return served.model(torch.tensor([tokens])).logits[0].float().log_softmax(-1)


# -- the key test: lm-eval scoring through the API equals scoring in process ---------------------


def test_lm_eval_local_completions_scores_arc_easy_as_in_process(served: Served, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval import evaluator
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from trainables.lm.lm_eval_tasks import ModuleLM, arc_easy_task, evaluate_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    served.tokenizer.save_pretrained(tmp_path / "tokenizer")
    limit = 30

    def run(lm: Any) -> dict[str, Any]:
        return evaluator.evaluate(lm=lm, task_dict={"tasks": {"arc_easy": arc_easy_task(SHARED_DATA)}, "groups": {}},
                                  limit=limit, log_samples=True)

    remote = run(LocalCompletionsAPI(base_url=f"{served.url}/v1/completions", model=NAME,
                                     tokenizer=str(tmp_path / "tokenizer"), tokenizer_backend="huggingface",
                                     tokenized_requests=True, batch_size=8, max_retries=1, max_length=513))
    local = run(ModuleLM(served.model, served.tokenizer))
    pairs = [(r["resps"], m["resps"]) for r, m in zip(remote["samples"]["arc_easy"], local["samples"]["arc_easy"],
                                                        strict=True)]
    assert len(pairs) == limit
    for by_api, in_process in pairs:  # per choice: [(loglikelihood, is_greedy)]
        assert [x[0][0] for x in by_api] == pytest.approx([x[0][0] for x in in_process], abs=2e-4)
        assert [x[0][1] for x in by_api] == [x[0][1] for x in in_process]
    api, reference = remote["results"]["arc_easy"], evaluate_lm(served.model, served.tokenizer, ("arc_easy",),
                                                                  limit=limit, data_root=SHARED_DATA)
    print(f"\narc_easy (first {limit}): local-completions acc {api['acc,none']:.4f} acc_norm "
          f"{api['acc_norm,none']:.4f} (stderr {api['acc_stderr,none']:.4f}); in process acc "
          f"{reference['arc_easy/acc']:.4f} acc_norm {reference['arc_easy/acc_norm']:.4f}")
    assert api["acc,none"] == reference["arc_easy/acc"] and api["acc_norm,none"] == reference["arc_easy/acc_norm"]


# -- logprobs, echo, prompts ----------------------------------------------------------------------


def test_chat_logprobs_are_the_models_through_the_openai_client(served: Served, client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": [
        {"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]}], max_tokens=6, temperature=0,
        logprobs=True, top_logprobs=3)
    plain = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hello\nthere"}],
                                           max_tokens=6, temperature=0)
    assert chat.choices[0].message.content == plain.choices[0].message.content  # text parts: joined by newlines
    entries = chat.choices[0].logprobs.content
    prompt = served.ids(served.tokenizer.apply_chat_template([{"role": "user", "content": "hello\nthere"}],
                                                             tokenize=False, add_generation_prompt=True))
    expected = log_softmax(served, prompt)  # the prompt's forward: the first generated token's log-probs
    first = entries[0]
    assert first.logprob == pytest.approx(float(expected[-1].max()), abs=1e-4)  # greedy: the likeliest token
    assert len(first.top_logprobs) == 3 and first.top_logprobs[0].logprob == pytest.approx(first.logprob, abs=1e-6)
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(expected[-1].topk(3).values.tolist(), abs=1e-4)
    assert all(isinstance(e.bytes, list) and e.top_logprobs[0].logprob >= e.logprob - 1e-6 for e in entries)
    assert len(entries) >= chat.usage.completion_tokens


def test_the_judge_backend_reads_top_logprobs_through_the_app(served: Served, client: openai.OpenAI) -> None:
    """The LLM judge's G-Eval mode over HTTP: ``OpenAIBackend`` (``AsyncOpenAI``) asks for ``top_logprobs``
    and hands back each position's token and alternatives, as the raw client sees them."""
    import asyncio

    from trainables.llm_judge.backends import OpenAIBackend
    from trainables.llm_judge.experts import expected_score

    messages = [{"role": "user", "content": "Score it from 0 to 9: 1 2 3"}]
    raw = client.chat.completions.create(model=NAME, messages=messages, max_tokens=5, temperature=0, logprobs=True,
                                         top_logprobs=20)

    async def ask() -> Any:
        backend = OpenAIBackend(f"{served.url}/v1", "", timeout_s=60)
        try:
            return await backend.chat(NAME, messages, {"temperature": 0.0, "max_tokens": 5, "top_logprobs": 20}, 1)
        finally:
            await backend.aclose()

    got = asyncio.run(ask())
    entries = raw.choices[0].logprobs.content
    assert got.text == raw.choices[0].message.content and len(got.logprobs) == len(entries) > 0
    for (token, top), entry in zip(got.logprobs, entries, strict=True):
        assert token == entry.token and len(top) == 20
        assert top == [(t.token, pytest.approx(t.logprob, abs=1e-6)) for t in entry.top_logprobs]
    digits = [(t, lp) for _, top in got.logprobs for t, lp in top if len(t.strip()) == 1 and t.strip().isdigit()]
    score = expected_score(got.logprobs)
    assert (score is None) == (not digits) and (score is None or 0.0 <= score <= 1.0)


def test_completions_echo_logprobs_and_every_prompt_form(served: Served, client: openai.OpenAI) -> None:
    first, second = served.ids("Question: why?\nAnswer: because"), served.ids("x y")
    scored = client.completions.create(model=NAME, prompt=[first, second], echo=True, logprobs=2, max_tokens=0,
                                       temperature=0)
    assert [c.index for c in scored.choices] == [0, 1] and scored.usage.completion_tokens == 0
    assert scored.usage.prompt_tokens == len(first) + len(second)
    for choice, ids in zip(scored.choices, (first, second), strict=True):
        assert choice.text == served.tokenizer.decode(ids) and choice.finish_reason == "length"
        lp = choice.logprobs
        expected = log_softmax(served, ids)
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and len(lp.tokens) == len(ids)
        assert lp.token_logprobs[1:] == pytest.approx([float(expected[t, ids[t + 1]]) for t in range(len(ids) - 1)],
                                                      abs=1e-4)
        assert all(2 <= len(top) <= 3 for top in lp.top_logprobs[1:])  # the top 2 and the token itself
        assert "".join(lp.tokens) == choice.text and lp.text_offset[0] == 0
    by_text = client.completions.create(model=NAME, prompt=["ab", "cd"], n=2, max_tokens=3, temperature=0)
    assert [c.index for c in by_text.choices] == [0, 1, 2, 3]  # prompt * n + choice
    alone = client.completions.create(model=NAME, prompt="cd", max_tokens=3, temperature=0)
    assert by_text.choices[2].text == by_text.choices[3].text == alone.choices[0].text
    by_ids = client.completions.create(model=NAME, prompt=served.ids("cd"), max_tokens=3, temperature=0, echo=True,
                                       logprobs=0)
    assert by_ids.choices[0].text == "cd" + alone.choices[0].text
    ended = by_ids.choices[0].finish_reason == "stop"  # the EOS that ended it has its entry too
    assert len(by_ids.choices[0].logprobs.tokens) == 2 + by_ids.usage.completion_tokens + ended


def test_streams_end_with_usage_when_asked(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = dict(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=5,
                                  temperature=0)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole.choices[0].message.content
    text = list(client.completions.create(model=NAME, prompt="ab", max_tokens=3, temperature=0, stream=True,
                                          echo=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in text[:-1]).startswith("ab") and text[-1].usage.prompt_tokens == 2


# -- fields we do not support: a 400 naming them ---------------------------------------------------

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TEXT = {"prompt": "hi", "max_tokens": 2}
REFUSED = [  # (path, body, the param the 400 names)
    ("chat", {**CHAT, "logprobs": 5}, "logprobs"),
    ("chat", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ("chat", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat", {**CHAT, "functions": [{"name": "f"}]}, "functions"),
    ("chat", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("chat", {**CHAT, "tool_choice": "auto"}, "tool_choice"),
    ("chat", {**CHAT, "response_format": {"type": "json_object"}}, "response_format"),
    ("chat", {**CHAT, "logit_bias": {"5": 10}}, "logit_bias"),
    ("chat", {**CHAT, "store": True}, "store"),
    ("chat", {**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ("chat", {**CHAT, "stream": True, "stream_options": {"continuous_usage_stats": True}},
     "stream_options.continuous_usage_stats"),
    ("chat", {**CHAT, "max_completion_tokens": 2}, "max_tokens"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content.0.type"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]},
     "messages.0.content.0.x"),
    ("chat", {"messages": [{"role": "user", "content": "a", "name": "bob"}]}, "messages.0.name"),
    ("text", {**TEXT, "top_k": 5}, "top_k"),
    ("text", {**TEXT, "logprobs": 21}, "logprobs"),
    ("text", {**TEXT, "max_tokens": 0}, "max_tokens"),
    ("text", {**TEXT, "suffix": "end"}, "suffix"),
    ("text", {**TEXT, "best_of": 3}, "best_of"),
    ("text", {"prompt": [[1, 2], [3, 100000]]}, "prompt.1"),
    ("text", {"prompt": []}, "prompt"),
    ("text", {"prompt": ["a", ""]}, "prompt.1"),
    ("text", {"prompt": ["a", "b"], "stream": True}, "prompt"),
]
ACCEPTED = [  # harmless values of fields we do not act on, as clients send them
    ("chat", {"messages": CHAT["messages"], "user": "u1", "logit_bias": {}, "tools": [], "tool_choice": "none",
              "parallel_tool_calls": True,
              "response_format": {"type": "text"}, "store": False, "seed": 3, "n": 2, "stop": ["\n"],
              "presence_penalty": 0.5, "frequency_penalty": 0.1, "max_completion_tokens": 2}),
    ("text", {**TEXT, "user": "u1", "best_of": 1, "suffix": "", "logit_bias": {}, "echo": False, "stream": False}),
]


@pytest.mark.parametrize(("path", "body", "param"), REFUSED, ids=[p for _, _, p in REFUSED])
def test_a_field_we_do_not_support_gets_a_400_naming_it(served: Served, path: str, body: dict[str, Any],
                                                       param: str) -> None:
    route = "/v1/chat/completions" if path == "chat" else "/v1/completions"
    reply = requests.post(served.url + route, json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"].startswith(param) and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(("path", "body"), ACCEPTED, ids=["chat", "text"])
def test_harmless_values_of_other_fields_are_accepted(served: Served, path: str, body: dict[str, Any]) -> None:
    route = "/v1/chat/completions" if path == "chat" else "/v1/completions"
    reply = requests.post(served.url + route, json=body, timeout=60)
    assert reply.status_code == 200, reply.text


# -- a client that goes away ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_client_that_disconnects_frees_its_batch_slot(served: Served, stream: bool) -> None:
    """The request would decode for 1000 tokens (greedy: it runs to the length limit, checked first); the client
    leaves as soon as its row is decoding, and the row leaves the batch within seconds, cancelled: the engine's
    count of rows cut short goes up by one, and the row ran fewer steps than its length limit. (How many steps
    it ran depends on the machine's speed, not on the cancellation: no bound on them.)"""
    engine = served.engine
    body = {"prompt": "go on and on", "max_tokens": 1000, "temperature": 0, "stream": stream}
    check = requests.post(f"{served.url}/v1/completions", json={**body, "stream": False}, timeout=120)
    assert check.json()["choices"][0]["finish_reason"] == "length"  # no EOS before the limit
    cancelled, steps = engine.cancelled, engine.steps
    with raw_post(served.url, "/v1/completions", body, timeout_s=30) as sock:
        deadline = time.monotonic() + 30
        while not (engine.running == 1 and engine.steps > steps):  # leave as soon as it decodes
            assert time.monotonic() < deadline, "the request never started decoding"
            time.sleep(0.005)
        if stream:
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    left = time.monotonic()  # the socket is closed: the client is gone
    wait_for(lambda: engine.running == 0, 10)
    print(f"\nslot freed {time.monotonic() - left:.2f} s after the client left, {engine.steps - steps} steps")
    assert engine.cancelled == cancelled + 1  # cut short, not finished
    assert engine.steps - steps < 1000
