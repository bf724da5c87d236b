"""One question through the mixture: experts answer, judges select, the reward model labels, ground
truth grades. Shared by training (one round per iteration) and evaluation (every expert answers).

``run_round`` runs every expert's generation at once, then every judge call at once (asyncio over
the ``Caller``, whose semaphore bounds what is in flight). A failing expert is skipped and logged;
a round where no expert answered, or no judge scored, has ``error`` set and no selection.
"""

from __future__ import annotations

import asyncio
import csv
import io
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from trainables.llm_judge.backends import Caller, CallFailed, GenerationConfig
from trainables.llm_judge.experts import (
    Answer,
    Selection,
    SelectionError,
    assign_intrinsic_reward,
    generate_complete_output,
    random_config,
    seed_for,
    select_best_output,
)
from trainables.llm_judge.tasks import Question, grade

CSV_FIELDS = ("iteration", "question_id", "expert", "model", "temperature", "top_p", "frequency_penalty",
              "presence_penalty", "error", "judge_scores", "score", "selected", "correct", "tokens", "seconds", "text")


@dataclass
class Team:
    """The experts' random configs, the gating model (judges) and the reward model, as the tutorial
    draws them: experts first, then the gating model, then the reward model, from one seeded RNG."""

    experts: list[GenerationConfig]
    gating: GenerationConfig
    reward: GenerationConfig

    @classmethod
    def draw(cls, cfg: Any, seed: int) -> Team:
        rng = random.Random(seed)
        experts = [random_config(rng, cfg) for _ in range(cfg.num_experts)]
        gating = random_config(rng, cfg, cfg.judge_max_tokens)
        return cls(experts, gating, random_config(rng, cfg, cfg.judge_max_tokens))

    def to_json(self) -> dict[str, Any]:
        return {"experts": [asdict(e) for e in self.experts], "gating": asdict(self.gating),
                "reward": asdict(self.reward)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Team:
        return cls([GenerationConfig(**e) for e in data["experts"]], GenerationConfig(**data["gating"]),
                   GenerationConfig(**data["reward"]))


@dataclass
class Round:
    """What happened to one question."""

    question: Question
    answered: list[int]  # the experts asked
    answers: dict[int, Answer] = field(default_factory=dict)  # the ones that answered
    expert_failures: dict[int, str] = field(default_factory=dict)
    selection: Selection | None = None
    label: str = "none"
    intrinsic_reward: float = 0.0
    correct: dict[int, bool | None] = field(default_factory=dict)  # graded answers
    error: str | None = None  # no expert answered, or no judge scored
    seconds: float = 0.0

    @property
    def selected(self) -> int | None:
        return self.selection.best if self.selection is not None else None

    def csv_rows(self, iteration: int, team: Team) -> list[dict[str, Any]]:
        rows = []
        for e in self.answered:
            config, answer = team.experts[e], self.answers.get(e)
            scores = self.selection.judge_scores.get(e, []) if self.selection else []
            score = self.selection.scores.get(e) if self.selection else None
            rows.append({"iteration": iteration, "question_id": self.question.id, "expert": e, "model": config.model,
                         "temperature": config.temperature, "top_p": config.top_p,
                         "frequency_penalty": config.frequency_penalty, "presence_penalty": config.presence_penalty,
                         "error": self.expert_failures.get(e, ""),
                         "judge_scores": ";".join("" if s is None else f"{s:.3f}" for s in scores),
                         "score": "" if score is None else round(score, 4), "selected": e == self.selected,
                         "correct": self.correct.get(e, ""), "tokens": answer.tokens if answer else 0,
                         "seconds": round(sum(c.seconds for c in answer.completions), 3) if answer else 0,
                         "text": answer.text if answer else ""})
        return rows


def csv_text(rows: list[dict[str, Any]], header: bool) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


async def run_round(caller: Caller, team: Team, cfg: Any, question: Question, experts: list[int], seed: int,
                    grade_all: bool = False, log: Any = print) -> Round:
    """Ask ``experts``, judge their answers, reward the selected one and grade (the selected answer,
    or every answer with ``grade_all``). Never raises for a failing call: see ``Round.error``."""
    started = time.monotonic()
    result = Round(question, list(experts))
    outcomes = await asyncio.gather(*(generate_complete_output(caller, team.experts[e], question.messages,
                                                               seed_for(seed, "expert", e), cfg.complete_output)
                                      for e in experts), return_exceptions=True)
    for e, outcome in zip(experts, outcomes, strict=True):
        if isinstance(outcome, CallFailed):
            result.expert_failures[e] = str(outcome)
            log(f"expert {e} skipped: {outcome}")
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            result.answers[e] = outcome
    if not result.answers:
        result.error = f"every expert failed ({len(experts)} asked)"
    else:
        try:
            result.selection = await select_best_output(
                caller, team.gating, {e: a.text for e, a in result.answers.items()}, question.context, cfg.n_judge,
                seed_for(seed, "select"), cfg.judge_retries, cfg.judge_max_tokens, cfg.judge_scoring,
                cfg.judge_top_logprobs)
        except SelectionError as exc:
            result.error = str(exc)
        if result.selection is not None:
            failures = result.selection.failures
            if failures:
                log(f"{len(failures)} of {len(result.answers) * cfg.n_judge} judges failed; first: {failures[0]}")
            chosen = result.answers[result.selection.best].text
            result.label, result.intrinsic_reward = await assign_intrinsic_reward(
                caller, team.reward, chosen, question.context, seed_for(seed, "reward"), cfg.judge_retries,
                cfg.judge_max_tokens)
    if question.gradable:
        to_grade = list(result.answers) if grade_all else ([result.selected] if result.selected is not None else [])
        verdicts = await asyncio.gather(*(asyncio.to_thread(grade, question, result.answers[e].text)
                                          for e in to_grade))
        result.correct = dict(zip(to_grade, verdicts, strict=True))
    result.seconds = time.monotonic() - started
    return result
