"""Continuous batching for the LM families: many requests decoded together over one KV cache.

``GenerationEngine(model, tokenizer)`` runs one background thread. ``submit(prompt_ids, params)``
queues a request and returns a ``GenerationStream`` of ``Event``s (new text, finish reason). The
loop, each iteration:

1. **join**: waiting requests (up to ``max_batch_size`` running in all) are prefilled together,
   left-padded, into a cache of their own (a ``SlabCache``: keys and values in preallocated slabs, so a
   decode step writes its column in place instead of copying the cache, ``kv_cache.py``); their first token
   is sampled; that cache is merged into the running one (the shorter of the two is left-padded with
   masked zeros along time: keys already carry their rotary positions, so padding never shifts a sequence);
2. **decode**: one forward over the last token of every running sequence, ``position_ids`` per
   row (its own real length), the attention mask marking each row's real positions; one token
   sampled per row with its own temperature, top-p and seeded generator;
3. **leave**: a row that produced EOS, hit ``max_tokens`` or a stop string finishes (its stream
   gets the finish reason) and is dropped from the cache; columns no row needs any more are
   trimmed from the left.

A row's text is decoded a few tokens at a time (``detokenize.IncrementalText``: the whole decode's
text, at a cost that does not grow with the completion's length).

Log-probabilities (OpenAI's ``logprobs``): a request may ask for the log-probability of each token
it generates (``SamplingParams.logprobs = k``: with the ``k`` likeliest alternatives) and of each of
its prompt tokens (``prompt_logprobs = k``, for scoring: the prompt's first token has none). They
are the *model's* distribution, ``log_softmax`` of the raw logits, before penalties, temperature and
top-p (as vLLM returns by default), so they do not depend on how the token was sampled. Prompt
log-probs come from the prefill's forward (its logits cover every position already); a request with
``max_tokens = 0`` is only scored: one forward over its prompt, in this thread, and it never joins
the batch. Rows that do not ask pay nothing: no log-softmax runs for them. Each ``Event`` carries
the entries of the tokens produced since the previous event (the token that ended the request, EOS,
included, as vLLM does), and the prompt's on the first event.

Cancelling: ``GenerationStream.cancel()`` (a client that went away) drops the row from the batch at
the next step, freeing its slot; a request still waiting is dropped when it would join. Its stream
gets no further event.

Logits shaping: OpenAI's frequency and presence penalties over the row's generated tokens
(``logit -= frequency_penalty * count + presence_penalty * (count > 0)``), then temperature and top-p.
Temperature divides the logits after their maximum is subtracted, so a tiny one sharpens towards
greedy without overflowing; one that is 0 in float32 (below about 1.4e-45) is greedy, as 0 is. Top-p
always keeps the likeliest token. A seed is taken modulo 2**64 (torch's generators' range).

Routing (each event's ``moe``), for the two kinds of MoE the engine meets, without naming a family:

- a model that routes per sequence (DyLoRA-MoE: ``route_prompts(input_ids, attention_mask) -> weights
  (B, E)``) is routed once at prefill; its rows' weights travel with the batch and are passed to every
  forward as ``routing_weights``, and every event carries them as ``{"experts": {"E0": 0.7, ...}}``;
- a model with submodules that route per token (MixLoRA's FFN blocks) is *traced*: any submodule with
  a ``pop_expert_choices() -> Tensor (B, T, k) | None`` method (the top-k expert ids of each token of
  its latest forward, highest weight first; None if it did not run) is read after every forward, in
  ``model.modules()`` order, which numbers the routed layers 0..L-1. Generated token j is attributed
  to the forward that computed its logits: the prompt's last position at prefill for the first one,
  token j-1's decode step after that (so a token and its trace are known at the same step, and n
  generated tokens have n routing records; prompt tokens are not reported). The *last* event of the
  request (the one with the finish reason) then carries the summary of its generated tokens::

      {"tokens": 5,                                  # generated tokens routed (= completion_tokens)
       "top_k": 2,
       "layers": [{"layer": 0, "experts": {"3": 4, "0": 3, "6": 2, "1": 1}},   # (token, expert)
                  {"layer": 1, "experts": {"5": 5, "2": 3, "7": 2}}],        # picks, most used first
       "per_token": [[[3, 0], [5, 2]], [[3, 6], [5, 7]], ...]}               # (n', L, k) expert ids

  Each layer's counts sum to ``tokens * top_k``. ``per_token[j][l]`` lists the k experts of layer l
  that carried token j, highest router weight first, for the first ``trace_tokens`` tokens only
  (default 64, so a 30-layer top-2 model adds at most 64 x 30 x 2 small ints per choice). With both
  kinds the keys merge. Earlier events carry only the per-sequence part (None for MixLoRA), and a
  request that generated no token (EOS first) has no summary. A model with neither kind pays
  nothing: no module is read, no record kept.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainables.lm.detokenize import IncrementalText
from trainables.lm.kv_cache import SlabCache


def greedy(temperature: float) -> bool:
    """Whether ``temperature`` decodes greedily: 0 (or below), or a positive value that float32 rounds to 0.
    NaN is not greedy: its request fails with its own error."""
    return float(np.float32(temperature)) <= 0


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings (OpenAI's meaning)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 (or 0 in float32) = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    frequency_penalty: float = 0.0  # per earlier occurrence of a token in the completion
    presence_penalty: float = 0.0  # once for any token already in the completion
    logprobs: int | None = None  # each generated token's log-prob and this many top alternatives
    prompt_logprobs: int | None = None  # the same for each prompt token (from the prefill's forward)


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability under the model (raw logits' log_softmax), and the ``k`` likeliest
    tokens at its position, most likely first. ``logprob`` is None for the prompt's first token."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Event:
    """What one decode step added to a request: ``text`` (may be empty while a multi-byte character is
    incomplete), and on the last event ``finish_reason`` (``stop`` | ``length``) and the usage counts."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    moe: dict[str, Any] | None = None
    logprobs: list[TokenLogprob] | None = None  # the tokens produced since the previous event, if asked
    prompt_logprobs: list[TokenLogprob] | None = None  # on the first event, if asked


def joined(events: list[Event]) -> Event:
    """The events of one request as one: the whole text and log-probs, the last event's finish and usage."""
    last = events[-1] if events else Event("")
    asked = [e.logprobs for e in events if e.logprobs is not None]
    prompt = next((e.prompt_logprobs for e in events if e.prompt_logprobs is not None), None)
    return Event("".join(e.text for e in events), last.finish_reason, last.prompt_tokens, last.completion_tokens,
                 last.moe, [t for part in asked for t in part] if asked else None, prompt)


class GenerationStream:
    """The events of one request, in order: iterate or ``collect()`` from a thread, or, when submitted
    with an event ``loop``, ``await next_event()`` / ``await collect_async()`` on that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._events: queue.Queue[Event | BaseException] = queue.Queue()
        self._loop = loop
        self._async: asyncio.Queue[Event | BaseException] | None = asyncio.Queue() if loop is not None else None
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None  # time.monotonic() of the first event put
        self.last_event_at: float | None = None  # ... and of the latest
        self.cancelled = False  # set by ``cancel``; read by the engine's thread

    def cancel(self) -> None:
        """Stop this request (its client went away): the engine drops its row at the next step. Harmless
        once the request has finished."""
        self.cancelled = True

    def put(self, event: Event | BaseException) -> None:
        """Called by the engine's thread."""
        self.last_event_at = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = self.last_event_at
        if self._loop is not None and self._async is not None:
            self._loop.call_soon_threadsafe(self._async.put_nowait, event)
        else:
            self._events.put(event)

    async def next_event(self) -> Event:
        assert self._async is not None, "submitted without an event loop"
        item = await self._async.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def collect_async(self) -> Event:
        """``collect`` on the event loop."""
        events = [await self.next_event()]
        while events[-1].finish_reason is None:
            events.append(await self.next_event())
        return joined(events)

    def get(self, timeout: float | None = None) -> Event:
        item = self._events.get(timeout=timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.get()
            yield event
            if event.finish_reason is not None:
                return

    def collect(self) -> Event:
        """Wait for the end: one ``Event`` with the whole text (and log-probs), the finish reason and usage."""
        return joined(list(self))


@dataclass
class _Row:
    prompt_ids: list[int]
    params: SamplingParams
    stream: GenerationStream
    generator: torch.Generator
    text: IncrementalText  # the completion's text, decoded a few tokens at a time (``_emit``)
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the decoded completion already sent
    moe: dict[str, Any] | None = None
    trace: list[torch.Tensor] = field(default_factory=list)  # per generated token: (L, k) expert ids
    logprobs: list[TokenLogprob] | None = None  # generated tokens' entries not yet sent (if asked)
    prompt_logprobs: list[TokenLogprob] | None = None  # the prompt's entries, until the first event

    def __post_init__(self) -> None:
        if self.params.logprobs is not None:
            self.logprobs = []

    def event(self, text: str, finish: str | None = None, moe: dict[str, Any] | None = None) -> Event:
        """An event with ``text``, carrying the log-prob entries gathered since the previous one."""
        logprobs, self.logprobs = self.logprobs, [] if self.logprobs is not None else None
        prompt, self.prompt_logprobs = self.prompt_logprobs, None
        if finish is None:
            return Event(text, moe=moe, logprobs=logprobs, prompt_logprobs=prompt)
        return Event(text, finish, len(self.prompt_ids), len(self.generated), moe, logprobs, prompt)


class GenerationEngine:
    """Continuous batching over ``model`` (a Hugging Face causal LM, or a wrapper with its forward).

    Args:
        model: eval mode; called as ``model(input_ids, attention_mask, position_ids, cache,
            use_cache=True)`` (plus ``routing_weights`` when it has ``route_prompts``).
        tokenizer: decodes the completion (``skip_special_tokens``); its EOS ends a row.
        max_batch_size: running sequences at most; more requests wait for a row to leave.
        expert_names: names of the routing weights' columns for ``moe`` (default ``E0``, ``E1``...).
        trace_tokens: per-token routing (``moe["per_token"]``) is reported for this many generated
            tokens at most; the per-layer counts cover them all.
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 16,
                 expert_names: list[str] | None = None, trace_tokens: int = 64) -> None:
        self.model, self.tokenizer, self.max_batch_size = model, tokenizer, max_batch_size
        self.routes = callable(getattr(model, "route_prompts", None))
        self.expert_names = expert_names
        # submodules that route per token and report it (see the module docstring), in layer order
        self.tracers = [m for m in model.modules() if callable(getattr(m, "pop_expert_choices", None))]
        self.trace_tokens = trace_tokens
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.eos = {tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
        self.eos.discard(None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self._waiting: queue.Queue[_Row] = queue.Queue()
        self._rows: list[_Row] = []
        self._cache: SlabCache | None = None  # keys/values in preallocated slabs (kv_cache.py)
        self._mask: torch.Tensor | None = None  # (B, T) 1 on each row's real positions
        self._lengths: torch.Tensor | None = None  # (B,) real tokens in the cache per row
        self._next: torch.Tensor | None = None  # (B,) the token each row feeds next
        self._weights: torch.Tensor | None = None  # (B, E) routing weights, for models that route per prompt
        self._stop = threading.Event()
        self.steps = 0  # decode steps done (for tests and stats)
        self.max_running = 0  # the most rows decoded together so far
        self.cancelled = 0  # rows dropped because their client went away
        self._thread = threading.Thread(target=self._loop, name="generation-engine", daemon=True)
        self._thread.start()

    # -- public -----------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               loop: asyncio.AbstractEventLoop | None = None) -> GenerationStream:
        """Queue one request; its events arrive on the returned stream (on ``loop``, if given)."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        generator = torch.Generator().manual_seed(params.seed % 2**64 if params.seed is not None
                                                  else int(torch.randint(0, 2**31 - 1, ()).item()))
        row = _Row(list(prompt_ids), params, GenerationStream(loop), generator, IncrementalText(self.tokenizer))
        self._waiting.put(row)
        return row.stream

    @property
    def running(self) -> int:
        return len(self._rows)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._drop_cancelled()
                self._admit()
                if self._rows:
                    self._decode()
            except Exception as exc:  # never leave a caller waiting: fail every running request
                for row in self._rows:
                    row.stream.put(RuntimeError(f"generation failed: {type(exc).__name__}: {exc}"))
                self._rows, self._cache = [], None

    def _admit(self) -> bool:
        """Prefill waiting requests into the batch; True if any joined. Blocks briefly when idle."""
        new: list[_Row] = []
        room = self.max_batch_size - len(self._rows)
        try:
            if room > 0:  # idle: wait a little for the first request; decoding: take only what is queued
                new.append(self._waiting.get(timeout=0.05) if not self._rows else self._waiting.get_nowait())
                while len(new) < room:
                    new.append(self._waiting.get_nowait())
        except queue.Empty:
            pass
        new = [row for row in new if not row.stream.cancelled]
        if not new:
            return False
        scored = [row for row in new if row.params.max_tokens == 0]  # prompt log-probs only: never join
        joining = [row for row in new if row.params.max_tokens > 0]
        for rows, step in ((scored, self._score), (joining, self._prefill)):
            try:
                if rows:
                    step(rows)
            except Exception as exc:  # these rows are not in the batch yet: fail them here, keep the batch
                for row in rows:
                    row.stream.put(RuntimeError(f"generation failed: {type(exc).__name__}: {exc}"))
        return True

    def _drop_cancelled(self) -> None:
        """Drop the rows whose client went away (``GenerationStream.cancel``), freeing their slots."""
        gone = [i for i, row in enumerate(self._rows) if row.stream.cancelled]
        if gone:
            self.cancelled += len(gone)
            self._drop(gone)

    @torch.no_grad()
    def _score(self, rows: list[_Row]) -> None:
        """Requests with ``max_tokens = 0``: one forward over their prompts for the prompt log-probs, then done."""
        self._forward_prompts(rows, SlabCache())
        self._trace()  # clear the traced modules' record: nothing is generated, nothing reported
        for row in rows:
            row.stream.put(row.event("", "length", row.moe))

    def _forward_prompts(self, rows: list[_Row], cache: SlabCache) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
        """The prefill's forward over ``rows``' prompts, left-padded, into ``cache``: ``(output, mask (k, T),
        routing weights (k, E) or None)``. Sets each row's per-sequence routing and, if it asked, its
        prompt log-probs."""
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row.prompt_ids):] = torch.tensor(row.prompt_ids)
            mask[i, width - len(row.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        extra: dict[str, Any] = {}
        weights = None
        if self.routes:
            weights = self.model.route_prompts(ids, mask)  # (k, E)
            extra["routing_weights"] = weights
            names = self.expert_names or [f"E{e}" for e in range(weights.shape[-1])]
            for row, w in zip(rows, weights.tolist(), strict=True):
                row.moe = {"experts": {n: round(v, 4) for n, v in zip(names, w, strict=True) if v > 0}}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache,
                         use_cache=True, **extra)
        for i, row in enumerate(rows):
            if row.params.prompt_logprobs is not None:  # position t's logits predict token t + 1
                n = len(row.prompt_ids)
                row.prompt_logprobs = [TokenLogprob(row.prompt_ids[0], None), *_logprobs(
                    out.logits[i, width - n:width - 1], row.prompt_ids[1:], row.params.prompt_logprobs)]
        return out, mask, weights

    @torch.no_grad()
    def _prefill(self, new: list[_Row]) -> None:
        cache = SlabCache()
        out, mask, weights = self._forward_prompts(new, cache)
        trace = self._trace()
        first = self._sample(out.logits[:, -1], new)
        self._merge(new, cache, mask, mask.sum(-1), first, weights)
        self._emit(first.tolist(), offset=len(self._rows) - len(new), trace=trace)

    @torch.no_grad()
    def _decode(self) -> None:
        assert self._cache is not None and self._mask is not None and self._next is not None
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        extra = {"routing_weights": self._weights} if self.routes else {}
        out = self.model(input_ids=self._next[:, None], attention_mask=self._mask,
                         position_ids=self._lengths[:, None], cache=self._cache, use_cache=True, **extra)
        trace = self._trace()
        self._lengths = self._lengths + 1
        self._next = self._sample(out.logits[:, -1], self._rows)
        self.steps += 1
        self._emit(self._next.tolist(), trace=trace)

    def _trace(self) -> torch.Tensor | None:
        """The routing of the latest forward's last position: (B, L, k) expert ids on the CPU, or None
        (no traced modules, or one that did not run). Left padding puts every row's last real token
        at the last position, at prefill as in decode (one position)."""
        if not self.tracers:
            return None
        choices = [m.pop_expert_choices() for m in self.tracers]  # L x (B, T, k)
        if any(c is None for c in choices):
            return None
        return torch.stack([c[:, -1] for c in choices], dim=1).cpu()  # (B, L, k)

    def _summary(self, row: _Row) -> dict[str, Any] | None:
        """``row.moe`` plus, for a traced model, the routing summary of its generated tokens."""
        if not row.trace:
            return row.moe
        ids = torch.stack(row.trace)  # (n, L, k)
        n, layers, top_k = ids.shape
        flat = ids.permute(1, 0, 2).reshape(layers, n * top_k)  # (L, n·k)
        counts = torch.zeros(layers, int(ids.max()) + 1, dtype=torch.long)  # (L, E seen)
        counts.scatter_add_(1, flat, torch.ones_like(flat))
        summary = []
        for layer, per_expert in enumerate(counts.tolist()):
            used = sorted((e for e, c in enumerate(per_expert) if c), key=lambda e: -per_expert[e])  # most first
            summary.append({"layer": layer, "experts": {str(e): per_expert[e] for e in used}})
        return {**(row.moe or {}), "tokens": n, "top_k": top_k, "layers": summary,
                "per_token": ids[:self.trace_tokens].tolist()}

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """One token per row (B,) from ``logits`` (B, V): greedy at temperature 0, else top-p sampling."""
        tokens = []
        for row, row_logits in zip(rows, logits.float(), strict=True):
            p = row.params
            raw = row_logits  # (V,) the model's own: log-probs are reported from these
            if (p.frequency_penalty or p.presence_penalty) and row.generated:
                counts = torch.bincount(torch.tensor(row.generated), minlength=row_logits.shape[-1])[
                    :row_logits.shape[-1]].to(row_logits.device, row_logits.dtype)  # (V,)
                row_logits = row_logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
            if greedy(p.temperature):
                tokens.append(int(row_logits.argmax()))
            else:
                tokens.append(self._draw(row_logits, p, row.generator))
            if row.logprobs is not None:
                row.logprobs += _logprobs(raw[None], tokens[-1:], p.logprobs or 0)
        return torch.tensor(tokens, device=logits.device)

    @staticmethod
    def _draw(row_logits: torch.Tensor, p: SamplingParams, generator: torch.Generator) -> int:
        """A token sampled from ``row_logits`` (V,) at ``p``'s temperature and top-p."""
        # (V,) the max subtracted first: the best logit is 0 at any temperature, the rest <= 0 (or -inf)
        probs = torch.softmax((row_logits - row_logits.max()) / p.temperature, dim=-1).cpu()
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < p.top_p  # the smallest set reaching top_p
            keep[0] = True  # the likeliest token always: a top_p below float32's range keeps none otherwise
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=generator))

    def _merge(self, new: list[_Row], cache: SlabCache, mask: torch.Tensor, lengths: torch.Tensor,
               first: torch.Tensor, weights: torch.Tensor | None) -> None:
        """Append the prefilled rows to the running batch, left-padding the shorter cache along time."""
        if self._cache is None or not self._rows:
            self._rows, self._cache, self._mask, self._lengths, self._next = list(new), cache, mask, lengths, first
            self._weights = weights
            self.max_running = max(self.max_running, len(self._rows))
            return
        t_old, t_new = self._mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)
        pad = lambda t, n: torch.nn.functional.pad(t, (0, 0, n, 0)) if n else t  # (B, H, T, D): left in T
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            old_layer.replace(torch.cat([pad(old_layer.keys, width - t_old), pad(new_layer.keys, width - t_new)]),
                              torch.cat([pad(old_layer.values, width - t_old), pad(new_layer.values, width - t_new)]))
        pad_mask = lambda m, n: torch.nn.functional.pad(m, (n, 0)) if n else m
        self._mask = torch.cat([pad_mask(self._mask, width - t_old), pad_mask(mask, width - t_new)])
        self._lengths = torch.cat([self._lengths, lengths])
        self._next = torch.cat([self._next, first])
        if weights is not None:
            self._weights = torch.cat([self._weights, weights])
        self._rows += new
        self.max_running = max(self.max_running, len(self._rows))

    def _emit(self, tokens: list[int], offset: int = 0, trace: torch.Tensor | None = None) -> None:
        """Send rows ``offset..`` their new token's text; finish and drop the rows that are done.

        ``trace`` (len(tokens), L, k): the routing that produced each token, kept with the row's
        generated tokens (an EOS is not generated, so its routing is not kept either). Text that
        could still grow into a stop string is held back until it cannot.
        """
        done = []
        routes = trace.unbind(0) if trace is not None else None  # len(tokens) x (L, k)
        for i, token in enumerate(tokens, start=offset):
            row = self._rows[i]
            finish = "stop" if token in self.eos else None
            if finish is None:
                row.generated.append(token)
                if routes is not None:
                    row.trace.append(routes[i - offset])
            text = row.text.of(row.generated)
            hits = [text.find(s) for s in row.params.stop if s and s in text]
            if hits:
                text, finish = text[:min(hits)], "stop"
            elif finish is None and len(row.generated) >= row.params.max_tokens:
                finish = "length"
            if finish is None:
                hold = max((len(s) - 1 for s in row.params.stop), default=0)
                text = text[:len(text) - hold] if hold else text
                if text.endswith("\ufffd"):
                    text = text[:-1]  # an incomplete multi-byte character: wait for the next token
            delta = text[row.emitted:]
            row.emitted = max(row.emitted, len(text))
            if finish is None:
                if delta:
                    row.stream.put(row.event(delta, moe=row.moe))
            else:
                row.stream.put(row.event(delta, finish, self._summary(row)))
                done.append(i)
        if done:
            self._drop(done)

    def _drop(self, done: list[int]) -> None:
        """Remove finished rows from the batch, and the cache columns no remaining row uses."""
        keep = [i for i in range(len(self._rows)) if i not in set(done)]
        self._rows = [self._rows[i] for i in keep]
        if not self._rows:
            self._cache = self._mask = self._lengths = self._next = self._weights = None
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._mask = self._mask[index]
        start = int((self._mask.sum(0) > 0).nonzero()[0])
        self._mask = self._mask[:, start:]
        for layer in self._cache.layers:
            layer.replace(layer.keys[index, :, start:], layer.values[index, :, start:])
        self._lengths, self._next = self._lengths[index], self._next[index]
        if self._weights is not None:
            self._weights = self._weights[index]


def _logprobs(logits: torch.Tensor, tokens: list[int], k: int) -> list[TokenLogprob]:
    """Each position's entry: ``tokens[i]``'s log-prob under ``logits`` (n, V) and the ``k`` likeliest."""
    logprobs = logits.float().log_softmax(-1)  # (n, V)
    index = torch.tensor(tokens, dtype=torch.long, device=logprobs.device)[:, None]  # (n, 1)
    chosen = logprobs.gather(-1, index)[:, 0].tolist()  # (n,)
    top_values, top_ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1) if k else (logprobs[:, :0],) * 2
    return [TokenLogprob(token, value, tuple(zip(ids, values, strict=True)))
            for token, value, ids, values in zip(tokens, chosen, top_ids.tolist(), top_values.tolist(), strict=True)]
