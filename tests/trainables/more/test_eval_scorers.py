"""The evaluation scorers on hand-made cases: exact match, perplexity windows, bAbI ranking, arithmetic."""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import pytest
import torch
from support import SHARED_DATA
from torch import nn

from trainables.data import ArithmeticFormat, ByteTokenizer, load_babi
from trainables.data.mixture import arithmetic_train_pool
from trainables.more import MoRELM
from trainables.more.evaluation import (
    accuracy,
    candidate_answers,
    evaluate_arithmetic,
    evaluate_babi,
    exact_match,
    greedy_answers,
    held_out_problems,
    normalize_answer,
    perplexity,
    rank_candidates,
    sliding_window_perplexity,
    window_plan,
)
from trainables.more.evaluation.babi import distinguishing_lengths

TOK = ByteTokenizer()
V = TOK.vocab_size


@pytest.fixture(autouse=True)
def _data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE_ORCH_DATA", os.environ.get("MOE_ORCH_DATA", str(SHARED_DATA)))


class RuleLM(nn.Module):
    """A hand-made 'LM': ``rule(text so far) -> next character`` gets all the probability mass.

    Provides what the scorers use: ``model(idx).logits`` (B, T, V), ``parameters()``, ``cfg.block_size``
    and MoRELM's own greedy ``generate``.
    """

    generate = MoRELM.generate

    def __init__(self, rule, block_size: int = 64) -> None:  # noqa: ANN001
        super().__init__()
        self.rule, self.cfg = rule, SimpleNamespace(block_size=block_size)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx: torch.Tensor) -> SimpleNamespace:
        logits = torch.full((*idx.shape, V), -30.0)
        for b, row in enumerate(idx.tolist()):
            for t in range(len(row)):
                char = self.rule(TOK.decode(row[: t + 1]))
                if char is not None:
                    logits[b, t, TOK.encode(char)[0]] = 30.0
        return SimpleNamespace(logits=logits)


class UniformLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=torch.zeros(*idx.shape, V))


def test_exact_match_and_accuracy() -> None:
    assert normalize_answer(" Garden.\n") == "garden"
    assert exact_match("kitchen", " Kitchen ") and not exact_match("kitchens", "kitchen")
    assert not exact_match("-12", "12") and exact_match("168", "168")
    assert accuracy(["a", "b", "c", "d"], ["a", "x", "C", "d"]) == 0.75
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy(["a"], [])
    assert perplexity(4 * math.log(3), 4) == pytest.approx(3.0)


@pytest.mark.parametrize(("n", "block", "stride"), [(100, 16, 8), (100, 16, 16), (17, 16, 4), (5, 16, 1), (64, 8, 3)])
def test_window_plan_scores_every_target_once(n: int, block: int, stride: int) -> None:
    scored = []
    for begin, end, first in window_plan(n, block, stride):
        assert 0 < end - begin <= block and end <= n - 1
        scored += [begin + i + 1 for i in range(first, end - begin)]
    assert scored == list(range(1, n))


def test_sliding_window_perplexity_uniform_and_perfect() -> None:
    tokens = torch.tensor(TOK.encode("abcabcabcabcabcabcabcabcabcabcabc"))  # (33,)
    uniform = sliding_window_perplexity(UniformLM(), tokens, block_size=8, stride=4, batch_size=3)
    assert uniform.n_tokens == 32 and uniform.perplexity == pytest.approx(V, rel=1e-4)
    assert uniform.bits_per_token == pytest.approx(math.log2(V), rel=1e-4)
    cycle = {"a": "b", "b": "c", "c": "a"}
    perfect = sliding_window_perplexity(RuleLM(lambda text: cycle[text[-1]]), tokens, block_size=8)
    assert perfect.stride == 4 and perfect.perplexity == pytest.approx(1.0, abs=1e-6)


def test_distinguishing_prefixes_of_the_babi_locations() -> None:
    candidates = candidate_answers(2)
    assert candidates == ["bathroom", "bedroom", "garden", "hallway", "kitchen", "office"]
    assert distinguishing_lengths([TOK.encode(" " + c) for c in candidates]) == [3, 3, 2, 2, 2, 2]
    assert distinguishing_lengths([[1, 2], [1, 2, 3]]) == [2, 3]  # a prefix of another: its full length


def test_rank_candidates_picks_what_the_model_says() -> None:
    def bedroom_lover(text: str) -> str | None:  # " b" then "e" wins; everything else is improbable
        return {"A:": " ", " b": "e"}.get(text[-2:], "b" if text.endswith("A: ") else None)

    scores = rank_candidates(RuleLM(bedroom_lover), TOK, ["story\nQ: Where?\nA:"] * 2, candidate_answers(2), 64)
    assert scores.shape == (2, 6) and scores.argmax(dim=1).tolist() == [1, 1]


def test_babi_accuracy_of_a_model_that_always_answers_garden() -> None:
    model = RuleLM(lambda text: " " if text.endswith("A:") else ("g" if text.endswith("A: ") else None), 96)
    acc, rows = evaluate_babi(model, TOK, 2, block_size=96, max_questions=50)
    truth = [ex.answer for ex in load_babi(2, "test")[:50]]
    assert acc == pytest.approx(sum(a == "garden" for a in truth) / 50)
    assert [r.predicted_answer for r in rows] == ["garden"] * 50
    assert rows[0].true_answer == truth[0] and rows[0].question.endswith("?") and rows[0].task == "qa2"


def _calculator(max_digits: int):  # noqa: ANN202
    """Answers a+b= / a-b= exactly when both operands have <= max_digits digits, else says 0."""

    def rule(text: str) -> str | None:
        line = text.rsplit("\n", 1)[-1]
        if "=" not in line:
            return None
        problem, done = line.split("=", 1)
        op = "+" if "+" in problem else "-"
        a, b = problem.split(op)
        right = max(len(a), len(b)) <= max_digits
        answer = (str(int(a) + int(b)) if op == "+" else str(int(a) - int(b))) if right else "0"
        return (answer + "\n")[len(done)] if len(done) <= len(answer) else "\n"

    return rule


def test_greedy_answers_stop_at_newline() -> None:
    model = RuleLM(_calculator(9))
    assert greedy_answers(model, TOK, ["\n12+30=", "\n5-7=", "\n999+1="], max_new_tokens=6) == ["42", "-2", "1000"]


def test_arithmetic_in_length_and_longer() -> None:
    metrics, rows = evaluate_arithmetic(RuleLM(_calculator(3)), TOK, train_digits=3, long_digits=[4, 5], n=12)
    assert metrics["arith_acc_in"] == 1.0 and metrics["arith_acc_d3"] == 1.0
    # operands are uniform below 10**digits: a few "longer" problems happen to be short enough
    assert metrics["arith_acc_long"] < 0.3 and set(metrics) >= {"arith_acc_d4", "arith_acc_d5"}
    assert len(rows) == 36 and {r.digits for r in rows} == {3, 4, 5}


def test_held_out_problems_avoid_the_training_pool_and_are_deterministic() -> None:
    pool = {ex.prompt for ex in arithmetic_train_pool(2)}
    problems = held_out_problems(100, 2, train_digits=2)
    assert len(problems) == 100 and not {p.prompt for p in problems} & pool
    assert problems == held_out_problems(100, 2, train_digits=2)


def test_arithmetic_in_the_reversed_format() -> None:
    form = ArithmeticFormat(ops=("+",), reverse=True)
    problems = held_out_problems(50, 3, train_digits=3, form=form)
    assert all("+" in p.prompt for p in problems)
    assert not {p.prompt for p in problems} & {ex.prompt for ex in arithmetic_train_pool(3, form)}

    def reversed_calculator(text: str) -> str | None:
        line = text.rsplit("\n", 1)[-1]
        if "=" not in line:
            return None
        problem, done = line.split("=", 1)
        a, b = problem.split("+")
        answer = str(int(a) + int(b))[::-1]
        return (answer + "\n")[len(done)] if len(done) <= len(answer) else "\n"

    metrics, _ = evaluate_arithmetic(RuleLM(reversed_calculator), TOK, 3, [4], n=12, form=form)
    assert metrics["arith_acc_in"] == 1.0
    plain, _ = evaluate_arithmetic(RuleLM(reversed_calculator), TOK, 3, [4], n=12, form=ArithmeticFormat(("+",)))
    assert plain["arith_acc_in"] < 0.5  # a reversed answer is wrong in the plain format (bar palindromes)


def test_padded_held_out_problems_use_the_training_width_or_their_own() -> None:
    form = ArithmeticFormat(ops=("+",), reverse=True, pad=True)
    assert {len(p.prompt) for p in held_out_problems(30, 2, train_digits=3, form=form)} == {len("000+000=")}
    assert {len(p.prompt) for p in held_out_problems(30, 5, train_digits=3, form=form)} == {len("00000+00000=")}
