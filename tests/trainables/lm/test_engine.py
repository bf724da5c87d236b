"""The continuous-batching engine on the tiny random Llama: requests that join and leave a running batch
decode exactly what ``model.generate`` decodes alone; stop strings, max_tokens, seeds, usage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trainables.lm import load_base
from trainables.lm.engine import GenerationEngine, SamplingParams


@pytest.fixture(scope="module")
def tiny() -> Iterator[tuple]:
    model, tokenizer = load_base("tiny-llama")
    engine = GenerationEngine(model, tokenizer, max_batch_size=3)
    yield model, tokenizer, engine
    engine.close()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_batched_greedy_decoding_equals_generate_alone(tiny: tuple) -> None:
    model, tokenizer, engine = tiny
    prompts = ["Hello there, how are", "x", "def f(a, b):\n    return", "The quick brown fox jumps over the dog"]
    # four requests of different lengths and budgets through three rows: they join and leave mid-decode
    streams = [engine.submit(_ids(tokenizer, p), SamplingParams(max_tokens=6 + 3 * i, temperature=0))
               for i, p in enumerate(prompts)]
    answers = [s.collect() for s in streams]
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        alone = model.generate(**ids, max_new_tokens=6 + 3 * i, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert answer.text == tokenizer.decode(alone[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert answer.finish_reason == "length" and answer.completion_tokens == 6 + 3 * i
        assert answer.prompt_tokens == len(_ids(tokenizer, prompt))
        assert answer.moe is None  # no routing: nothing traced, nothing reported
    assert engine.max_running == 3 and engine.tracers == []


def _printable_pair(text: str) -> int | None:
    """Where ``text`` first has two printable ASCII characters that occur nowhere earlier (a random model
    also samples bytes that are not valid UTF-8; they decode to replacement characters)."""
    return next((i for i in range(1, len(text) - 1) if text[i:i + 2].isascii() and text[i:i + 2].isprintable()
                 and text.index(text[i:i + 2]) == i), None)


def test_stop_strings_seeds_and_streamed_pieces(tiny: tuple) -> None:
    _, tokenizer, engine = tiny
    ids = _ids(tokenizer, "seed me")
    sample = lambda seed: engine.submit(ids, SamplingParams(max_tokens=20, temperature=1.0, seed=seed)).collect()
    assert sample(12).text == sample(12).text and sample(12).text != sample(13).text
    seed, first = next((s, t) for s, t in ((s, sample(s)) for s in range(12, 40)) if _printable_pair(t.text))
    cut = _printable_pair(first.text)
    stop = first.text[cut:cut + 2]
    stopped = engine.submit(ids, SamplingParams(max_tokens=20, temperature=1.0, seed=seed, stop=(stop,))).collect()
    assert stopped.text == first.text[:cut] and stopped.finish_reason == "stop"
    pieces = list(engine.submit(ids, SamplingParams(max_tokens=20, temperature=1.0, seed=seed)))
    assert "".join(p.text for p in pieces) == first.text and pieces[-1].finish_reason == first.finish_reason
    assert all(p.finish_reason is None for p in pieces[:-1])


def test_frequency_and_presence_penalties_follow_openai(tiny: tuple) -> None:
    """logit -= frequency_penalty * count + presence_penalty * (count > 0), over the completion's tokens."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    model, tokenizer, engine = tiny

    class Penalties(LogitsProcessor):
        def __init__(self, start: int, frequency: float, presence: float) -> None:
            self.start, self.frequency, self.presence = start, frequency, presence

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            for row in range(scores.shape[0]):
                counts = torch.bincount(input_ids[row, self.start:], minlength=scores.shape[-1]).to(scores.dtype)
                scores[row] -= self.frequency * counts + self.presence * (counts > 0).to(scores.dtype)
            return scores

    changed = 0
    for prompt, frequency, presence in (("aaaa", 1.5, 0.0), ("Hello there", 0.0, 2.0), ("xyz xyz", 0.7, 0.4)):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        start = ids["input_ids"].shape[1]
        expected = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                  logits_processor=LogitsProcessorList([Penalties(start, frequency, presence)]))
        got = engine.submit(_ids(tokenizer, prompt), SamplingParams(12, 0.0, frequency_penalty=frequency,
                                                                   presence_penalty=presence)).collect()
        assert got.text == tokenizer.decode(expected[0, start:], skip_special_tokens=True)
        plain = engine.submit(_ids(tokenizer, prompt), SamplingParams(12, 0.0)).collect()
        changed += plain.text != got.text
    assert changed >= 1  # the penalties did something


def test_a_top_p_below_float32_range_samples_the_likeliest_token(tiny: tuple) -> None:
    # 5e-324 is 0 in float32: no token reached it, sampling raised in prefill, and the request waited forever
    model, tokenizer, engine = tiny
    tiny_p = engine.submit(_ids(tokenizer, "hello"),
                           SamplingParams(max_tokens=5, temperature=1.0, top_p=5e-324, seed=1))
    greedy = engine.submit(_ids(tokenizer, "hello"), SamplingParams(max_tokens=5, temperature=0))
    assert _collect_within(tiny_p, 60) == greedy.collect().text


def _collect_within(stream, timeout_s: float) -> str:
    """The whole text of ``stream``; queue.Empty if any piece takes longer than ``timeout_s``."""
    parts, event = [], None
    while event is None or event.finish_reason is None:
        event = stream.get(timeout=timeout_s)
        parts.append(event.text)
    return "".join(parts)


def test_a_request_failing_in_prefill_gets_an_error_and_the_engine_keeps_serving(tiny: tuple) -> None:
    model, tokenizer, engine = tiny
    broken = engine.submit(_ids(tokenizer, "hello"), SamplingParams(max_tokens=3, temperature=float("nan")))
    with pytest.raises(RuntimeError, match="generation failed"):
        broken.get(timeout=60)
    assert engine.submit(_ids(tokenizer, "still here"), SamplingParams(max_tokens=3, temperature=0)).collect().text


def test_logprobs_are_the_models_log_softmax_for_prompt_and_completion(tiny: tuple) -> None:
    """Prompt and generated tokens' log-probs equal one teacher-forced forward's log_softmax; greedy picks
    the top alternative; sampling settings do not change them."""
    import torch

    model, tokenizer, engine = tiny
    prompt = _ids(tokenizer, "Score me, please")
    got = engine.submit(prompt, SamplingParams(max_tokens=5, temperature=0, logprobs=3, prompt_logprobs=2)).collect()
    generated = [t.token for t in got.logprobs]
    assert len(generated) == got.completion_tokens + (got.finish_reason == "stop")  # the EOS that ended it, too
    with torch.no_grad():
        expected = model(torch.tensor([prompt + generated])).logits[0].float().log_softmax(-1)  # (T, V)
    tokens = prompt + generated
    assert got.prompt_logprobs[0].logprob is None and [t.token for t in got.prompt_logprobs] == prompt
    for position, entry in enumerate([*got.prompt_logprobs[1:], *got.logprobs], start=1):
        assert entry.logprob == pytest.approx(float(expected[position - 1, tokens[position]]), abs=1e-4)
        top = expected[position - 1].topk(len(entry.top))
        assert [t for t, _ in entry.top] == top.indices.tolist()
        assert [v for _, v in entry.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert all(len(e.top) == 2 for e in got.prompt_logprobs[1:]) and all(len(e.top) == 3 for e in got.logprobs)
    assert all(e.top[0][0] == e.token for e in got.logprobs)  # greedy: the likeliest token
    hot = engine.submit(prompt, SamplingParams(max_tokens=3, temperature=1.5, seed=4, logprobs=0)).collect()
    assert hot.prompt_logprobs is None and all(e.top == () for e in hot.logprobs)
    with torch.no_grad():
        hot_expected = model(torch.tensor([prompt + [t.token for t in hot.logprobs]])).logits[0].log_softmax(-1)
    assert [e.logprob for e in hot.logprobs] == pytest.approx(
        [float(hot_expected[len(prompt) - 1 + j, e.token]) for j, e in enumerate(hot.logprobs)], abs=1e-4)
    plain = engine.submit(prompt, SamplingParams(max_tokens=5, temperature=0)).collect()
    assert plain.logprobs is None and plain.prompt_logprobs is None and plain.text == got.text


def test_max_tokens_zero_scores_the_prompt_without_joining_the_batch(tiny: tuple) -> None:
    _, tokenizer, engine = tiny
    prompt = _ids(tokenizer, "only score this")
    steps = engine.steps
    got = engine.submit(prompt, SamplingParams(max_tokens=0, prompt_logprobs=1)).collect()
    assert got.text == "" and got.finish_reason == "length" and got.completion_tokens == 0
    assert got.prompt_tokens == len(prompt) and [t.token for t in got.prompt_logprobs] == prompt
    assert engine.steps == steps and engine.running == 0


def test_a_cancelled_request_leaves_the_batch_and_frees_its_slot(tiny: tuple) -> None:
    import time

    _, tokenizer, engine = tiny
    prompt = _ids(tokenizer, "go on and on")
    cancelled = engine.cancelled
    stream = engine.submit(prompt, SamplingParams(max_tokens=400, temperature=0))
    stream.get(timeout=60)  # decoding
    stream.cancel()
    deadline = time.monotonic() + 10
    while engine.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.running == 0 and engine.cancelled == cancelled + 1
    assert engine.submit(prompt, SamplingParams(max_tokens=2, temperature=0)).collect().completion_tokens == 2
