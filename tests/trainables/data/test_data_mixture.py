"""The training mixture: weights validated, rows drawn per source, bAbI windows end at an answer."""

from __future__ import annotations

import os
import re

import pytest
import torch
from support import SHARED_DATA

from trainables.data import ArithmeticFormat, ByteTokenizer, encode_corpus
from trainables.data.mixture import (
    arithmetic_train_pool,
    babi_train_stream,
    build_mixture,
    mixture_batches,
    mixture_errors,
)

TOK = ByteTokenizer()
LM_TEXT = "the quick brown fox jumps over the lazy dog. " * 200


@pytest.fixture(autouse=True)
def _data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE_ORCH_DATA", os.environ.get("MOE_ORCH_DATA", str(SHARED_DATA)))


def test_mixture_errors_list_every_problem() -> None:
    assert mixture_errors(None) == [] and mixture_errors({"lm": 1, "babi": 0.5}, 3) == []
    errors = mixture_errors({"lm": -1, "pictures": 1, "babi": "x"}, 0)
    assert len(errors) == 4
    assert any("data.mixture.pictures" in e for e in errors) and any("data.arith_train_digits" in e for e in errors)
    assert mixture_errors({"lm": 0, "babi": 0}) == [
        "data.mixture: got no positive weight, expected at least one of lm, babi, arithmetic > 0"]


def test_babi_windows_end_right_after_an_answer() -> None:
    mixture = build_mixture(encode_corpus(LM_TEXT, TOK), {"babi": 1.0}, 3, TOK)
    assert mixture.names == ("babi",) and mixture.babi_answer_ends is not None
    assert mixture.babi_answer_ends.numel() == 2000  # qa2 + qa3 train
    x, y = mixture_batches(mixture, 16, 96, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 96) and torch.equal(x[:, 1:], y[:, :-1])
    answers = {"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}
    for row in range(16):
        text = TOK.decode(y[row].tolist())
        assert text.endswith("\n"), text
        assert re.search(r"\nA: (\w+)\n$", text).group(1) in answers


def test_rows_follow_the_weights_and_the_seed() -> None:
    mixture = build_mixture(encode_corpus(LM_TEXT, TOK), {"lm": 0.5, "arithmetic": 0.5}, 2, TOK)
    x, _ = mixture_batches(mixture, 400, 32, torch.Generator().manual_seed(1))
    texts = [TOK.decode(row.tolist()) for row in x]
    arithmetic_rows = sum(bool(re.search(r"\d[-+]\d+=", t)) for t in texts)
    lm_rows = sum("fox" in t or "lazy" in t or "quick" in t for t in texts)
    assert arithmetic_rows + lm_rows == 400 and 150 < arithmetic_rows < 250
    again, _ = mixture_batches(mixture, 400, 32, torch.Generator().manual_seed(1))
    assert torch.equal(x, again)


def test_arithmetic_pool_is_deterministic_and_bounded() -> None:
    pool = arithmetic_train_pool(3)
    assert pool == arithmetic_train_pool(3) and len(pool) == 3 * 5000
    lengths = {max(len(n) for n in re.findall(r"\d+", ex.prompt)) for ex in pool}
    assert lengths == {1, 2, 3}
    stream, ends = babi_train_stream(TOK, tasks=(2,))
    assert ends.numel() == 1000 and TOK.decode(stream[ends[0] - 5 : ends[0] + 2].tolist()) == "garden\n"


def test_arithmetic_format_reaches_the_training_stream() -> None:
    form = ArithmeticFormat(ops=("+",), reverse=True)
    pool = arithmetic_train_pool(2, form)
    assert len(pool) == 2 * 5000 and all("+" in ex.prompt and "-" not in ex.prompt for ex in pool)
    for ex in pool[:200]:
        a, b = ex.prompt[:-1].split("+")
        assert ex.answer == str(int(a) + int(b))[::-1]
    mixture = build_mixture(encode_corpus(LM_TEXT, TOK), {"arithmetic": 1.0}, 2, TOK, arith_format=form)
    assert mixture.names == ("arithmetic",)
    lines = TOK.decode(mixture.streams["arithmetic"].tolist()).splitlines()
    assert lines == [ex.text() for ex in pool]


def test_padded_pool_has_one_operand_width() -> None:
    pool = arithmetic_train_pool(3, ArithmeticFormat(ops=("+",), reverse=True, pad=True))
    assert {len(ex.prompt) for ex in pool} == {len("000+000=")}
    assert {ex.prompt for ex in pool[:50]} != {ex.prompt for ex in arithmetic_train_pool(3)[:50]}
