"""G-Eval scoring (``judge_scoring: logprobs``): the expected digit under the judge's own distribution,
from ``top_logprobs``. The arithmetic on given log-probs, then a real judge (SmolLM2-135M-Instruct, in
this process through the local backend) whose score is checked against one forward of the same model."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from trainables.llm_judge.backends import Caller, GenerationConfig, LocalLM
from trainables.llm_judge.config import JudgeConfig
from trainables.llm_judge.experts import digit_score_messages, expected_score, judge_score

LOG = math.log


def test_the_score_is_the_mean_digit_over_the_digit_tokens_renormalized() -> None:
    top = [("7", LOG(0.5)), (" 7", LOG(0.1)), ("9", LOG(0.2)), ("The", LOG(0.15)), ("0", LOG(0.05))]
    # digits: 7 -> 0.6 (two tokens pooled), 9 -> 0.2, 0 -> 0.05; renormalized over 0.85, divided by 9
    want = (7 * 0.6 + 9 * 0.2 + 0 * 0.05) / 0.85 / 9
    assert expected_score([("7", top)]) == pytest.approx(want, abs=1e-4)


def test_the_first_position_that_produced_a_digit_is_read() -> None:
    preamble = ("Score", [("Score", LOG(0.6)), ("2", LOG(0.1))])  # a digit among the alternatives only
    digit = (" 8", [(" 8", LOG(0.9)), (" 6", LOG(0.1))])
    assert expected_score([preamble, (":", [(":", 0.0)]), digit]) == pytest.approx((8 * 0.9 + 6 * 0.1) / 9, abs=1e-4)
    # no position produced a digit: the first with a digit among its alternatives
    assert expected_score([preamble, (":", [(":", 0.0)])]) == pytest.approx(2 / 9, abs=1e-4)


@pytest.mark.parametrize("logprobs", [[], [("good", [("good", 0.0), ("fine", -3.0)])],
                                      [("x", [("10", -0.1), ("½", -1.0), ("٣", -2.0)])]])
def test_no_digit_anywhere_is_no_score(logprobs: list) -> None:
    assert expected_score(logprobs) is None  # "10", "½" and an Arabic-Indic digit are not the digits 0..9


def test_the_settings_are_declared() -> None:
    assert JudgeConfig(judge_scoring="logprobs").errors() == []
    problems = JudgeConfig(judge_scoring="tokens", judge_top_logprobs=21).errors()
    assert any(p.startswith("judge_scoring: got 'tokens'") for p in problems), problems
    assert any(p.startswith("judge_top_logprobs: got 21") for p in problems), problems


@pytest.fixture(scope="module")
def smollm2() -> LocalLM:
    lm = LocalLM("smollm2-135m-instruct", threads=2)
    yield lm
    lm.close()


class _InProcess:
    """The local backend's ``chat`` over one in-process model (no Ray)."""

    def __init__(self, lm: LocalLM) -> None:
        self.lm = lm

    async def chat(self, model, messages, sampling, seed):  # noqa: ANN001, ANN201 - the Backend protocol
        from trainables.llm_judge.backends import Completion

        return Completion(**await self.lm.chat(messages, sampling, seed))

    async def aclose(self) -> None:
        pass


def test_a_real_judge_scores_from_its_own_distribution(smollm2: LocalLM) -> None:
    judge = GenerationConfig("smollm2-135m-instruct", temperature=0.0, top_p=1.0, frequency_penalty=0.0,
                             presence_penalty=0.0, max_tokens=4)
    context = "Which object gives off its own light? A. the moon B. a mirror C. the sun D. a window"
    candidates = ["C. the sun, because stars make their own light.", "A mirror.", "purple elephant seven"]

    async def scores() -> list[float]:
        caller = Caller(_InProcess(smollm2), max_concurrency=4, timeout_s=120, retries=0, backoff_s=0)
        return await asyncio.gather(*(judge_score(caller, judge, context, c, seed=1, retries=0, max_tokens=4,
                                                  scoring="logprobs") for c in candidates))

    got = asyncio.run(scores())
    assert all(0.0 <= s <= 1.0 for s in got), got

    # the first candidate's score by hand: greedy forwards of the same model over the same chat prompt,
    # each position's top 20 (the engine's EOS would end the reply early: stop there too)
    tokenizer, model = smollm2.tokenizer, smollm2.engine.model
    ids = smollm2._prompt_ids(digit_score_messages(context, candidates[0]))
    positions = []
    with torch.no_grad():
        for _ in range(judge.max_tokens):
            logprobs = model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)  # (V,)
            values, order = logprobs.topk(20)
            token = int(order[0])
            top = [(tokenizer.decode([i]), v) for i, v in zip(order.tolist(), values.tolist(), strict=True)]
            positions.append((tokenizer.decode([token]), top))
            if token == tokenizer.eos_token_id:
                break
            ids.append(token)
    by_hand = expected_score(positions)
    assert by_hand is not None and got[0] == pytest.approx(by_hand, abs=2e-4), (positions, got)
