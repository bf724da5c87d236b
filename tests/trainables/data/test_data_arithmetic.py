"""Generated arithmetic: deterministic by seed, correct answers, digit bound respected."""

import re

import pytest

from trainables.data import arithmetic_examples, load_text, reverse_answer


def test_same_seed_same_list_different_seed_different() -> None:
    assert arithmetic_examples(200, seed=7) == arithmetic_examples(200, seed=7)
    assert arithmetic_examples(200, seed=7) != arithmetic_examples(200, seed=8)


@pytest.mark.parametrize("digits", [1, 3, 5])
def test_answers_correct_and_operands_bounded(digits: int) -> None:
    examples = arithmetic_examples(500, digits=digits, seed=1, ops=("+", "-", "*"))
    assert {ex.prompt[-1] for ex in examples} == {"="}
    seen_ops = set()
    for ex in examples:
        a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)=", ex.prompt).groups()
        seen_ops.add(op)
        assert len(a) <= digits and len(b) <= digits
        assert int(a) < 10**digits and int(b) < 10**digits
        assert str(a) == str(int(a)) and str(b) == str(int(b))  # no leading zeros
        assert ex.answer == str(eval(ex.prompt[:-1]))
    assert seen_ops == {"+", "-", "*"}
    assert any(ex.answer.startswith("-") for ex in examples)  # subtraction may go negative


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ops"):
        arithmetic_examples(3, ops=("/",))
    with pytest.raises(ValueError, match="digits"):
        arithmetic_examples(3, digits=0)


def test_registered_splits_differ_and_are_stable() -> None:
    train, val, test = (load_text("arithmetic", s) for s in ("train", "validation", "test"))
    assert len(train.splitlines()) == len(val.splitlines()) == len(test.splitlines()) == 2000
    assert len({train, val, test}) == 3
    assert train == load_text("arithmetic", "train")
    first = train.splitlines()[0]
    prompt, answer = first.split("=")
    assert answer == str(eval(prompt))


def test_reversed_answers_keep_the_problems_and_reverse_the_digits() -> None:
    plain = arithmetic_examples(300, digits=3, seed=5, ops=("+", "-"))
    flipped = arithmetic_examples(300, digits=3, seed=5, ops=("+", "-"), reverse=True)
    assert [ex.prompt for ex in flipped] == [ex.prompt for ex in plain]
    assert [ex.answer for ex in flipped] == [reverse_answer(ex.answer) for ex in plain]
    assert reverse_answer("168") == "861" and reverse_answer("-120") == "-021" and reverse_answer("7") == "7"
    assert arithmetic_examples(1, ops=("+",), reverse=True, seed=0)[0].text().count("=") == 1


def test_padding_fixes_the_operand_width_and_keeps_the_draws() -> None:
    plain = arithmetic_examples(300, digits=2, seed=5, ops=("+",))
    padded = arithmetic_examples(300, digits=2, seed=5, ops=("+",), pad_to=3)
    for p, q in zip(plain, padded, strict=True):
        a, b = q.prompt[:-1].split("+")
        assert len(a) == len(b) == 3 and f"{int(a)}+{int(b)}=" == p.prompt and q.answer == p.answer
