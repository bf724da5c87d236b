"""Where the experts and judges run: chat calls to an OpenAI-compatible endpoint or to local LMs.

- ``OpenAIBackend``: the ``openai`` client (``AsyncOpenAI``) on ``base_url``, the key from an env
  var, as the tutorial's ``api_key_schema``: OpenRouter, vLLM, a llama.cpp server, or
  ``moe-orch serve`` of an LM family;
- ``LocalBackend``: each model (an LM base name or an LM-family checkpoint directory) loaded once
  in a Ray actor (``LocalLM``) with a continuous-batching engine, so the concurrent calls of an
  iteration decode together. Outside a Ray session (``moe-orch evaluate``) the models load in
  this process instead, with the same engine. With ``local_gpus`` > 0 each actor asks Ray for that
  many GPUs and runs its model on CUDA in bfloat16 (``trainables.lm.base.to_device``); with 0 (the
  default) nothing asks for a GPU and the models run on CPU, as before.

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


# One generated position's log-probabilities, as OpenAI's ``logprobs.content[i]`` gives them: the token
# produced there and its ``top_logprobs`` alternatives ``[(token text, log-prob), ...]``, likeliest first.
TokenChoice = tuple[str, list[tuple[str, float]]]


@dataclass
class Completion:
    """One chat answer and what it cost; ``logprobs`` per generated position when the call asked for
    ``top_logprobs`` (``Caller.chat``)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    seconds: float = 0.0
    logprobs: list[TokenChoice] | None = None


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
        sampling = dict(sampling)
        top = sampling.pop("top_logprobs", None)
        asked = {"logprobs": True, "top_logprobs": top} if top else {}
        response = await self.client.chat.completions.create(model=model, messages=messages, seed=seed,
                                                             **sampling, **asked)
        choice = response.choices[0]
        usage = response.usage
        logprobs = None
        if top:
            content = (choice.logprobs.content if choice.logprobs is not None else None) or []
            logprobs = [(c.token, [(t.token, t.logprob) for t in (c.top_logprobs or [])]) for c in content]
        return Completion(choice.message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, choice.finish_reason, logprobs=logprobs)

    async def aclose(self) -> None:
        await self.client.close()


# -- local LMs -------------------------------------------------------------------------------


class LocalLM:
    """One LM and its generation engine; a Ray actor in ``LocalBackend`` (or a plain object outside Ray)."""

    def __init__(self, ref: str, threads: int, max_batch_size: int = 32, device: str = "cpu") -> None:
        import torch

        from trainables.lm.base import load_base, to_device
        from trainables.lm.engine import GenerationEngine
        from trainables.lm.serving import load_lm
        from trainables.openmp import in_fresh_thread
        from trainables.training.manifest import is_checkpoint

        torch.set_num_threads(max(1, threads))

        def load() -> tuple[Any, Any]:
            if is_checkpoint(ref):  # an LM-family checkpoint (MixLoRA, DyLoRA-MoE): base + adapters
                model, tokenizer, _ = load_lm(Path(ref))
            else:
                model, tokenizer = load_base(ref, device=device)  # bfloat16 on cuda
            return to_device(model, device), tokenizer  # a checkpoint's model: built on cpu, merged, then moved

        # loaded in a thread that ends, so the engine's thread is the only OpenMP team (trainables.openmp)
        model, self.tokenizer = in_fresh_thread(load)
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
        top = sampling.get("top_logprobs")
        params = SamplingParams(sampling["max_tokens"], sampling["temperature"], sampling["top_p"], (), seed,
                                sampling.get("frequency_penalty", 0.0), sampling.get("presence_penalty", 0.0),
                                logprobs=top)
        event = await self.engine.submit(ids, params, loop=asyncio.get_running_loop()).collect_async()
        text = lambda token: self.tokenizer.decode([token])  # noqa: E731 - one token's text
        logprobs = None if not top else [(text(t.token), [(text(i), lp) for i, lp in t.top])
                                         for t in event.logprobs or []]
        return {"text": event.text, "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens, "finish_reason": event.finish_reason,
                "logprobs": logprobs}

    def placement(self) -> dict[str, str]:
        """Where the model runs: ``{"device": "cpu" | "cuda", "dtype": "float32" | "bfloat16" ...}``."""
        weight = next(self.engine.model.parameters())
        return {"device": weight.device.type, "dtype": str(weight.dtype).removeprefix("torch.")}

    def close(self) -> None:
        self.engine.close()


class LocalBackend:
    """Each distinct model of ``models`` loaded once: in a Ray actor when Ray is up, else in-process;
    ``gpus`` > 0: on CUDA (module docstring)."""

    def __init__(self, models: list[str], cpus: float, gpus: float = 0.0) -> None:
        import ray

        self.actors: dict[str, Any] = {}
        self.local: dict[str, LocalLM] = {}
        threads = max(1, int(cpus))
        device = "cuda" if gpus > 0 else "cpu"
        if ray.is_initialized():
            remote = ray.remote(LocalLM).options(**self.actor_options(cpus, gpus))
            self.actors = {m: remote.remote(m, threads, device=device) for m in dict.fromkeys(models)}
        else:
            import torch

            if device == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"model.local_gpus: got {gpus}, expected 0 here: no CUDA device in this process")
            self.local = {m: LocalLM(m, threads, device=device) for m in dict.fromkeys(models)}

    @staticmethod
    def actor_options(cpus: float, gpus: float) -> dict[str, Any]:
        """Ray options of each model's actor: ``cpus`` CPUs and, only when ``gpus`` > 0, that many GPUs."""
        return {"num_cpus": cpus, **({"num_gpus": gpus} if gpus > 0 else {}), "max_concurrency": 256}

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
    return LocalBackend(cfg.models, cfg.local_cpus, cfg.local_gpus)


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
                   max_tokens: int | None = None, top_logprobs: int | None = None) -> Completion:
        """One call with ``config``'s sampling; CallFailed after ``retries`` retries. ``top_logprobs``: the
        answer's ``logprobs`` hold that many alternatives per generated position."""
        sampling = config.sampling(max_tokens)
        if top_logprobs:
            sampling["top_logprobs"] = top_logprobs
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
                        self.backend.chat(config.model, messages, sampling, seed), self.timeout_s)
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
