"""One question through experts, judges and rewards, over real HTTP with the ``openai`` client, against
a scripted OpenAI-compatible server (``tests/scripted_llm.py``): selection, failures, retries, timeouts
and the bound on calls in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest
from scripted_llm import ScriptedLLM
from support import SHARED_DATA

from trainables.llm_judge.backends import Caller, GenerationConfig, OpenAIBackend
from trainables.llm_judge.config import JudgeConfig
from trainables.llm_judge.pipeline import Team, run_round
from trainables.llm_judge.tasks import load_questions


def expert(model: str) -> GenerationConfig:
    return GenerationConfig(model, 0.8, 0.9, 0.1, 0.1, 32)


@pytest.fixture(scope="module")
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM(SHARED_DATA, slow_s=5.0) as server:
        yield server


def _round(llm: ScriptedLLM, team: Team, cfg: JudgeConfig, questions: int = 2, **kw: object) -> tuple[list, dict]:
    async def go() -> tuple[list, dict]:
        caller = Caller(OpenAIBackend(llm.base_url, "NO_SUCH_KEY_VAR", cfg.timeout_s), cfg.max_concurrency,
                        cfg.timeout_s, cfg.retries, cfg.backoff_s)
        qs = load_questions("arc_easy", "validation", questions, str(SHARED_DATA), seed=0)
        rounds = [await run_round(caller, team, cfg, q, list(range(len(team.experts))), seed=i, **kw)
                  for i, q in enumerate(qs)]
        await caller.backend.aclose()
        return rounds, caller.reset()

    return asyncio.run(go())


def test_judges_select_the_right_answer_and_a_failing_expert_is_skipped(llm: ScriptedLLM) -> None:
    cfg = JudgeConfig(backend="openai", base_url=llm.base_url, n_judge=3, retries=2, backoff_s=0.01,
                      complete_output=False)
    experts = [expert("wrong"), expert("oracle"), expert("broken"), expert("wrong")]
    team = Team(experts, expert("wrong"), expert("wrong"))
    logged: list[str] = []
    rounds, counts = _round(llm, team, cfg, log=logged.append)
    for r in rounds:
        assert set(r.answers) == {0, 1, 3} and list(r.expert_failures) == [2]
        assert "InternalServerError" in r.expert_failures[2] and "after 2 retries" in r.expert_failures[2]
        assert r.selected == 1 and r.selection.scores[1] >= 0.9 and r.selection.scores[0] < 0.2
        assert all(len(s) == 3 and None not in s for s in r.selection.judge_scores.values())
        assert (r.label, r.intrinsic_reward) == ("effective", 0.7)
        assert r.correct == {1: True}  # only the selected answer is graded in training
    assert sum("expert 2 skipped" in line for line in logged) == 2
    # the broken expert: 3 attempts per question; judges re-asked after a reply without a score
    assert counts["failed_calls"] == 2 and counts["retries"] == 4
    judge_calls = counts["calls"] - 2 * 3 - 2 * 3 - 2  # minus expert attempts, and the reward calls
    assert judge_calls > 2 * 3 * 3  # some judges needed a second reply
    rows = rounds[0].csv_rows(0, team)
    assert [row["selected"] for row in rows] == [False, True, False, False] and rows[2]["error"]


def test_every_answer_is_graded_for_evaluation_and_an_all_failed_round_is_an_error(llm: ScriptedLLM) -> None:
    cfg = JudgeConfig(backend="openai", base_url=llm.base_url, n_judge=1, retries=0, complete_output=False)
    team = Team([expert("oracle"), expert("wrong")], expert("oracle"), expert("oracle"))
    rounds, _ = _round(llm, team, cfg, questions=1, grade_all=True)
    assert rounds[0].correct == {0: True, 1: False}
    broken = Team([expert("broken"), expert("broken")], expert("oracle"), expert("oracle"))
    rounds, _ = _round(llm, broken, cfg, questions=1)
    assert rounds[0].selection is None and rounds[0].error == "every expert failed (2 asked)"


def test_calls_are_concurrent_bounded_and_timed_out(llm: ScriptedLLM) -> None:
    cfg = JudgeConfig(backend="openai", base_url=llm.base_url, n_judge=3, retries=0, complete_output=False,
                      max_concurrency=3)
    team = Team([expert("wrong")] * 6, expert("wrong"), expert("wrong"))
    llm.max_in_flight = 0
    _round(llm, team, cfg, questions=1)
    assert llm.max_in_flight == 3  # 6 experts, then 18 judge calls, never more than 3 at once
    llm.max_in_flight = 0
    _round(llm, team, replace(cfg, max_concurrency=32), questions=1)
    assert llm.max_in_flight > 3

    slow = Team([expert("slow"), expert("oracle")], expert("oracle"), expert("oracle"))
    rounds, counts = _round(llm, slow, replace(cfg, timeout_s=0.5, retries=1, backoff_s=0.01), questions=1)
    assert "timed out (after 1 retries)" in rounds[0].expert_failures[0] and rounds[0].selected == 1
