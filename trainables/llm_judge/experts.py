"""The tutorial's expert and judge calls (``../shared/specs/llm-judge-moe.md``), without LionAGI.

- ``random_config``: a model from the list, temperature, top_p, frequency and presence penalties
  drawn uniformly from their ranges, and ``max_tokens``;
- ``generate_complete_output``: an answer that does not end in ``.``, ``!`` or ``?`` is continued
  once ("continue and complete the previous sentence") and the two parts joined;
- ``select_best_output``: ``n_judge`` judges score every candidate in [0, 1] (3 digits), all calls
  at once; a reply without a score is asked again up to ``retries`` times, then that judge fails
  (``JudgeError``, with its replies). A candidate's score is the mean of its judges that answered;
  the best-scored candidate wins (ties: the lower index, as the tutorial's stable sort). If no
  judge scored any candidate, ``SelectionError``;
- ``judge_scoring: logprobs`` (G-Eval's probability-weighted score, Liu et al. 2023): each judge is
  asked for one digit from 0 to 9 with ``top_logprobs``; its score is the expected digit under the
  judge's own distribution over the ten digit tokens, divided by 9 (``expected_score``), read at the
  first generated position that produced a digit (else the first whose alternatives hold one). It
  needs no parsing of the reply's text, so it has a score whenever a digit is among the alternatives
  (SmolLM2-135M with 20: all but 3 of the 1,200 judges of a 100-question evaluation); the free-text mode
  stays the default;
- ``assign_intrinsic_reward``: the reward model picks one of five labels, mapped to
  1.0 / 0.7 / 0.5 / 0.2 / 0.0; a reply with no label (after the same retries) is 0.0, the
  tutorial's default case.

Every call gets its own seed (``seed_for``), so judges asked about the same candidate do not
repeat each other, and a run is reproducible where the backend honours seeds.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from dataclasses import dataclass, field
from typing import Any

from trainables.llm_judge.backends import Caller, CallFailed, Completion, GenerationConfig, Messages, TokenChoice

JUDGE_SYSTEM = "Act as a critical judge."
CONTINUE = "continue and complete the previous sentence"
REWARD_LABELS = {"highly effective": 1.0, "effective": 0.7, "moderate": 0.5, "poor": 0.2, "bad": 0.0}
_LABEL_RE = re.compile(r"\b(highly effective|effective|moderate|poor|bad)\b")
# a number, optionally scaled: "0.734", "1", "7/10", "85%", "85 / 100"
_SCORE_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(/\s*10\b|/\s*100\b|%)?")


def random_config(rng: random.Random, cfg: Any, max_tokens: int | None = None) -> GenerationConfig:
    """The tutorial's ``get_random_config`` over ``cfg``'s (a ``JudgeConfig``) models and ranges."""
    return GenerationConfig(
        model=rng.choice(cfg.models),
        temperature=round(rng.uniform(*cfg.temperature_range), 4),
        top_p=round(rng.uniform(*cfg.top_p_range), 4),
        frequency_penalty=round(rng.uniform(*cfg.frequency_penalty_range), 4),
        presence_penalty=round(rng.uniform(*cfg.presence_penalty_range), 4),
        max_tokens=max_tokens or cfg.max_tokens,
    )


def seed_for(*parts: Any) -> int:
    """A call's seed from its coordinates (run seed, iteration, role, indices): stable across runs."""
    return random.Random("/".join(map(str, parts))).randrange(2**31 - 1)


def check_output_completeness(output: str) -> bool:
    """The tutorial's check: the answer ends with a complete sentence."""
    return output.rstrip().endswith((".", "!", "?"))


@dataclass
class Answer:
    """An expert's answer, and what it cost (one call, or two with the continuation)."""

    text: str
    completions: list[Completion] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(c.prompt_tokens + c.completion_tokens for c in self.completions)


async def generate_complete_output(caller: Caller, config: GenerationConfig, messages: Messages, seed: int,
                                   complete: bool = True) -> Answer:
    """The expert's answer to ``messages``, continued once if it stops mid-sentence."""
    first = await caller.chat(config, messages, seed)
    answer = Answer(first.text, [first])
    if complete and not check_output_completeness(first.text):
        follow = messages + [{"role": "assistant", "content": first.text}, {"role": "user", "content": CONTINUE}]
        more = await caller.chat(config, follow, seed + 1)
        joint = "" if not first.text or first.text[-1:].isspace() or more.text[:1].isspace() else " "
        answer.text = first.text + joint + more.text
        answer.completions.append(more)
    return answer


# -- judging ----------------------------------------------------------------------------------


class JudgeError(RuntimeError):
    """A judge that gave no usable reply after its retries; ``replies`` are what it said."""

    def __init__(self, message: str, replies: list[str]) -> None:
        super().__init__(message)
        self.replies = replies


class SelectionError(RuntimeError):
    """No judge scored any candidate: nothing can be selected."""


def parse_score(text: str) -> float | None:
    """The first number in ``text`` that is a score in [0, 1] (``7/10`` and ``85%`` scaled), to 3 digits."""
    for match in _SCORE_RE.finditer(text):
        value, scale = float(match.group(1)), (match.group(2) or "").replace(" ", "")
        value /= {"/10": 10.0, "/100": 100.0, "%": 100.0}.get(scale, 1.0)
        if 0.0 <= value <= 1.0:
            return round(value, 3)
    return None


def expected_score(logprobs: list[TokenChoice]) -> float | None:
    """G-Eval's score in [0, 1]: the probability-weighted mean of the digits 0..9 among a position's
    ``top_logprobs`` (tokens that are a digit once stripped, e.g. ``"7"`` and ``" 7"``, pooled),
    renormalized over the digits and divided by 9. The position read is the first whose produced token
    is a digit, else the first with a digit among its alternatives; None if no position has one."""

    def digits(top: list[tuple[str, float]]) -> dict[int, float]:
        mass: dict[int, float] = {}
        for token, logprob in top:
            text = token.strip()
            if len(text) == 1 and text.isdigit() and text.isascii():
                mass[int(text)] = mass.get(int(text), 0.0) + math.exp(logprob)
        return mass

    produced = [top for token, top in logprobs if len(token.strip()) == 1 and token.strip().isdigit()]
    for top in produced + [top for _, top in logprobs]:
        mass = digits(top)
        if mass:
            total = sum(mass.values())
            return round(sum(d * p for d, p in mass.items()) / total / 9, 4)
    return None


def parse_label(text: str) -> str | None:
    """The first of the five reward labels in ``text`` (``highly effective`` before ``effective``)."""
    match = _LABEL_RE.search(text.lower())
    return match.group(1) if match else None


def score_messages(context: str, candidate: str) -> Messages:
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Background: {context}\n\nCandidate: {candidate}\n\n"
                                        "Basing on context, score the candidate for relevance and coherence. "
                                        "Reply with a score between 0 and 1 with 3 digits."}]


def digit_score_messages(context: str, candidate: str) -> Messages:
    """The judge's prompt in ``logprobs`` scoring: one digit, read from its log-probabilities."""
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Background: {context}\n\nCandidate: {candidate}\n\n"
                                        "Basing on context, score the candidate for relevance and coherence "
                                        "from 0 (worst) to 9 (best). Reply with the digit only."}]


def reward_messages(context: str, candidate: str) -> Messages:
    labels = ", ".join(REWARD_LABELS)
    return [{"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Background: {context}\n\nCandidate: {candidate}\n\n"
                                        f"Basing on context, select a judgement for the candidate, one of: {labels}. "
                                        "Reply with the judgement only."}]


async def _ask_until(caller: Caller, config: GenerationConfig, messages: Messages, seed: int, retries: int,
                     max_tokens: int, parse: Any, top_logprobs: int | None = None) -> tuple[Any, list[str]]:
    """Ask, parse (the ``Completion``), and ask again (new seed) up to ``retries`` times; (parsed or None,
    replies)."""
    replies = []
    for attempt in range(retries + 1):
        try:
            reply = await caller.chat(config, messages, seed + attempt, max_tokens=max_tokens,
                                      top_logprobs=top_logprobs)
        except CallFailed as exc:
            replies.append(f"<call failed: {exc}>")
            continue
        replies.append(reply.text)
        parsed = parse(reply)
        if parsed is not None:
            return parsed, replies
    return None, replies


async def judge_score(caller: Caller, judge: GenerationConfig, context: str, candidate: str, seed: int,
                      retries: int = 3, max_tokens: int = 16, scoring: str = "text", top_logprobs: int = 20) -> float:
    """One judge's score of ``candidate`` in [0, 1]: parsed from its reply (``scoring="text"``) or its
    expected digit (``"logprobs"``, ``expected_score``); JudgeError after ``retries`` re-asks without one."""
    if scoring == "logprobs":
        score, replies = await _ask_until(caller, judge, digit_score_messages(context, candidate), seed, retries,
                                          max_tokens, lambda reply: expected_score(reply.logprobs or []),
                                          top_logprobs)
    else:
        score, replies = await _ask_until(caller, judge, score_messages(context, candidate), seed, retries,
                                          max_tokens, lambda reply: parse_score(reply.text))
    if score is None:
        raise JudgeError(f"judge ({judge.model}) gave no score in [0, 1] in {len(replies)} replies; "
                         f"last: {replies[-1][:120]!r}", replies)
    return score


@dataclass
class Selection:
    """The judges' verdict: the winner, every candidate's mean score (None: no judge scored it), each
    judge's score (None: that judge failed), and the failed judges' messages."""

    best: int
    scores: dict[int, float | None]
    judge_scores: dict[int, list[float | None]]
    failures: list[str]


async def select_best_output(caller: Caller, judge: GenerationConfig, candidates: dict[int, str], context: str,
                             n_judge: int, seed: int, retries: int = 3, max_tokens: int = 16, scoring: str = "text",
                             top_logprobs: int = 20) -> Selection:
    """Score every candidate with ``n_judge`` judges at once; the best by mean score (module docstring)."""
    order = [(idx, j) for idx in candidates for j in range(n_judge)]
    results = await asyncio.gather(*(judge_score(caller, judge, context, candidates[idx],
                                                 seed_for(seed, "judge", idx, j), retries, max_tokens, scoring,
                                                 top_logprobs)
                                     for idx, j in order), return_exceptions=True)
    per_judge: dict[int, list[float | None]] = {idx: [] for idx in candidates}
    failures = []
    for (idx, j), result in zip(order, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, JudgeError | CallFailed):
                raise result
            failures.append(f"candidate {idx}, judge {j}: {result}")
            per_judge[idx].append(None)
        else:
            per_judge[idx].append(result)
    scores = {idx: (sum(v for v in s if v is not None) / sum(v is not None for v in s)
                    if any(v is not None for v in s) else None) for idx, s in per_judge.items()}
    scored = [idx for idx in candidates if scores[idx] is not None]
    if not scored:
        raise SelectionError(f"no judge scored any of the {len(candidates)} candidates "
                             f"({len(failures)} judges failed; first: {failures[0] if failures else '-'})")
    best = max(scored, key=lambda idx: (scores[idx], -idx))
    return Selection(best, scores, per_judge, failures)


async def assign_intrinsic_reward(caller: Caller, reward_model: GenerationConfig, candidate: str, context: str,
                                  seed: int, retries: int = 3, max_tokens: int = 16) -> tuple[str, float]:
    """The reward model's label for ``candidate`` and its reward (no label after retries: ``none``, 0.0)."""
    label, _ = await _ask_until(caller, reward_model, reward_messages(context, candidate), seed, retries, max_tokens,
                                lambda reply: parse_label(reply.text))
    return (label, REWARD_LABELS[label]) if label is not None else ("none", 0.0)
