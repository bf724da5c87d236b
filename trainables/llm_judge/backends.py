"""Where the experts and judges run: chat calls to an OpenAI-compatible endpoint or to local LMs.

- ``OpenAIBackend``: the ``openai`` client (``AsyncOpenAI``) on ``base_url``, the key from an env
  var, as the tutorial's ``api_key_schema``: OpenRouter, vLLM, a llama.cpp server, or
  ``moe-orch serve`` of an LM family;
- ``LocalBackend``: each model (an LM base name or an LM-family checkpoint directory) loaded once
  in a Ray actor (``LocalLM``) with a continuous-batching engine, so the concurrent calls of an
  iteration decode together. Outside a Ray session (``moe-orch evaluate``) the models load in
  this process instead, with the same engine.

``Caller`` is what the pipeline talks to: every call goes through one semaphore (at most
``max_concurrency`` in flight), a timeout, and retries with exponential backoff; it counts calls,
failures and tokens. A call that still fails raises ``CallFailed``.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class GenerationConfig:
    """One expert's (or judge's) generation settings: the tutorial's random config."""

    model: str
    temperature: float
    top_p: float
    frequency_penalty: float
    presence_penalty: float
    max_tokens: int

    def sampling(self, max_tokens: int | None = None) -> dict[str, Any]:
        """The OpenAI request fields, with ``max_tokens`` overridden if given."""
        return {"temperature": self.temperature, "top_p": self.top_p, "frequency_penalty": self.frequency_penalty,
                "presence_penalty": self.presence_penalty, "max_tokens": max_tokens or self.max_tokens}


@dataclass
class Completion:
    """One chat answer and what it cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    seconds: float = 0.0


class CallFailed(RuntimeError):
    """A call that failed after its retries (the message names the model and the last error)."""


class Backend(Protocol):
    async def chat(self, model: str, messages: Messages, sampling: dict[str, Any], seed: int | None) -> Completion:
        """One chat completion."""
        ...

    async def aclose(self) -> None:
        ...


# -- OpenAI-compatible endpoints --------------------------------------------------------------


class OpenAIBackend:
    """Chat completions through the ``openai`` client (its own retries off: ``Caller`` retries)."""

    def __init__(self, base_url: str, api_key_env: str, timeout_s: float) -> None:
        import logging

        from openai import AsyncOpenAI

        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        # local servers (vLLM, llama.cpp, moe-orch serve) take any key; the client insists on one
        self.client = AsyncOpenAI(base_url=base_url, api_key=key or "no-key", max_retries=0, timeout=timeout_s)

    async def chat(self, model: str, messages: Messages, sampling: dict[str, Any], seed: int | None) -> Completion:
        response = await self.client.chat.completions.create(model=model, messages=messages, seed=seed, **sampling)
        choice = response.choices[0]
        usage = response.usage
        return Completion(choice.message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, choice.finish_reason)

    async def aclose(self) -> None:
        await self.client.close()


# -- local LMs -------------------------------------------------------------------------------


class LocalLM:
    """One LM and its generation engine; a Ray actor in ``LocalBackend`` (or a plain object outside Ray)."""

    def __init__(self, ref: str, threads: int, max_batch_size: int = 32) -> None:
        import torch

        from trainables.lm.base import load_base
        from trainables.lm.engine import GenerationEngine
        from trainables.lm.serving import load_lm
        from trainables.training.manifest import is_checkpoint

        torch.set_num_threads(max(1, threads))
        if is_checkpoint(ref):  # an LM-family checkpoint (MixLoRA, DyLoRA-MoE): base + adapters
            model, self.tokenizer, _ = load_lm(Path(ref))
        else:
            model, self.tokenizer = load_base(ref)
        self.engine = GenerationEngine(model, self.tokenizer, max_batch_size=max_batch_size)

    def _prompt_ids(self, messages: Messages) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a base without a chat template: plain "role: content" turns
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def chat(self, messages: Messages, sampling: dict[str, Any], seed: int | None) -> dict[str, Any]:
        from trainables.lm.engine import SamplingParams

        ids = self._prompt_ids(messages)
        params = SamplingParams(sampling["max_tokens"], sampling["temperature"], sampling["top_p"], (), seed,
                                sampling.get("frequency_penalty", 0.0), sampling.get("presence_penalty", 0.0))
        event = await self.engine.submit(ids, params, loop=asyncio.get_running_loop()).collect_async()
        return {"text": event.text, "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens, "finish_reason": event.finish_reason}

    def close(self) -> None:
        self.engine.close()


class LocalBackend:
    """Each distinct model of ``models`` loaded once: in a Ray actor when Ray is up, else in-process."""

    def __init__(self, models: list[str], cpus: float) -> None:
        import ray

        self.actors: dict[str, Any] = {}
        self.local: dict[str, LocalLM] = {}
        threads = max(1, int(cpus))
        if ray.is_initialized():
            remote = ray.remote(LocalLM)
            self.actors = {m: remote.options(num_cpus=cpus, max_concurrency=256).remote(m, threads)
                           for m in dict.fromkeys(models)}
        else:
            self.local = {m: LocalLM(m, threads) for m in dict.fromkeys(models)}

    async def chat(self, model: str, messages: Messages, sampling: dict[str, Any], seed: int | None) -> Completion:
        if model in self.actors:
            answer = await self.actors[model].chat.remote(messages, sampling, seed)
        elif model in self.local:
            answer = await self.local[model].chat(messages, sampling, seed)
        else:
            raise CallFailed(f"model {model!r} is not loaded here (models: {', '.join(self.actors or self.local)})")
        return Completion(**answer)

    async def aclose(self) -> None:
        import ray

        for actor in self.actors.values():
            ray.kill(actor)
        for lm in self.local.values():
            lm.close()


def make_backend(cfg: Any) -> Backend:
    """The backend a ``JudgeConfig`` names."""
    if cfg.backend == "openai":
        return OpenAIBackend(cfg.base_url, cfg.api_key_env, cfg.timeout_s)
    return LocalBackend(cfg.models, cfg.local_cpus)


# -- bounded, retried calls --------------------------------------------------------------------


def _retryable(exc: BaseException) -> bool:
    """Timeouts, connection errors, 408/409/429 and 5xx are retried; other 4xx (a bad request) are not."""
    status = getattr(exc, "status_code", None)
    return status is None or status in (408, 409, 429) or status >= 500


class Caller:
    """Every chat call of the pipeline: bounded concurrency, a timeout, retries with backoff, counters."""

    def __init__(self, backend: Backend, max_concurrency: int, timeout_s: float, retries: int,
                 backoff_s: float) -> None:
        self.backend = backend
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self._slots = asyncio.Semaphore(max_concurrency)
        self.counts = self._zero()

    def reset(self) -> dict[str, float]:
        """The counters since the last reset: calls, failed calls, retries, prompt and completion tokens."""
        counts, self.counts = self.counts, self._zero()
        return counts

    @staticmethod
    def _zero() -> dict[str, float]:
        return {"calls": 0, "failed_calls": 0, "retries": 0, "prompt_tokens": 0, "completion_tokens": 0}

    async def chat(self, config: GenerationConfig, messages: Messages, seed: int | None,
                   max_tokens: int | None = None) -> Completion:
        """One call with ``config``'s sampling; CallFailed after ``retries`` retries."""
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.counts["retries"] += 1
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            async with self._slots:
                started = time.monotonic()
                self.counts["calls"] += 1
                try:
                    answer = await asyncio.wait_for(
                        self.backend.chat(config.model, messages, config.sampling(max_tokens), seed), self.timeout_s)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any backend error is retried or reported
                    last = exc
                    if not _retryable(exc):
                        break
                    continue
            answer.seconds = time.monotonic() - started
            self.counts["prompt_tokens"] += answer.prompt_tokens
            self.counts["completion_tokens"] += answer.completion_tokens
            return answer
        self.counts["failed_calls"] += 1
        kind = "timed out" if isinstance(last, TimeoutError) else f"{type(last).__name__}: {last}"
        raise CallFailed(f"{config.model}: {kind} (after {self.retries} retries)")
