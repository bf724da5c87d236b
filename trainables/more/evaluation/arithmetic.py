"""Arithmetic by greedy decoding, on held-out generated problems, by operand length.

Problems come from ``trainables.data.arithmetic_examples`` with an evaluation seed
(``EVAL_SEED + digits``), minus any problem that is in the training pool
(``trainables.data.mixture.arithmetic_train_pool``). The model reads ``"\\n" + prompt``
(training lines follow a newline) and greedily decodes up to ``digits + 2`` tokens; the
answer is the text before the first newline, scored by exact match. Operand lengths up
to ``train_digits`` are *in length*; longer ones measure length generalisation. Operators,
answer order (reversed digits or not) and zero-padding of the operands (to ``train_digits``, or
the problem's own length when longer) follow the training ``ArithmeticFormat``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainables.data import ArithmeticExample, ArithmeticFormat, Tokenizer, arithmetic_examples
from trainables.data.arithmetic import DEFAULT_FORMAT
from trainables.data.mixture import arithmetic_train_pool
from trainables.more.evaluation.scoring import accuracy

EVAL_SEED = 777


@dataclass(frozen=True)
class ArithmeticPrediction:
    digits: int
    prompt: str
    true_answer: str
    predicted_answer: str


def held_out_problems(
    n: int, digits: int, train_digits: int, form: ArithmeticFormat = DEFAULT_FORMAT
) -> list[ArithmeticExample]:
    """``n`` problems with operands below 10**digits in ``form``, none of them in the training pool."""
    seen = {ex.prompt for ex in arithmetic_train_pool(train_digits, form)} if digits <= train_digits else set()
    out: list[ArithmeticExample] = []
    batch = 0
    while len(out) < n and batch < 100:
        drawn = arithmetic_examples(4 * n, digits, seed=EVAL_SEED + 1000 * batch + digits, ops=form.ops,
                                    reverse=form.reverse, pad_to=max(digits, train_digits) if form.pad else 0)
        fresh = [ex for ex in drawn if ex.prompt not in seen]
        out += fresh[: n - len(out)]
        batch += 1
    return out


@torch.no_grad()
def greedy_answers(
    model: nn.Module, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """Greedy continuation of each prompt, cut at the first newline. Prompts of equal token
    length are decoded together (no padding, so positions match training)."""
    encoded = [tokenizer.encode(p) for p in prompts]
    answers = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    device = next(model.parameters()).device
    for length, members in by_length.items():
        for j in range(0, len(members), batch_size):
            rows = members[j : j + batch_size]
            idx = torch.tensor([encoded[i] for i in rows], device=device)  # (B, length)
            out = model.generate(idx, max_new_tokens, greedy=True)  # (B, length + n)
            for i, ids in zip(rows, out[:, length:].tolist(), strict=True):
                answers[i] = tokenizer.decode(ids).split("\n", 1)[0]
    return answers


def evaluate_arithmetic(
    model: nn.Module, tokenizer: Tokenizer, train_digits: int, long_digits: Sequence[int], n: int,
    batch_size: int = 64, form: ArithmeticFormat = DEFAULT_FORMAT,
) -> tuple[dict[str, float], list[ArithmeticPrediction]]:
    """``arith_acc_d{D}`` per operand length D (``train_digits`` and each of ``long_digits``),
    ``arith_acc_in`` (= the train_digits figure) and ``arith_acc_long`` (all longer problems pooled);
    problems and expected answers in the training ``form``."""
    metrics: dict[str, float] = {}
    rows: list[ArithmeticPrediction] = []
    long_hits: list[tuple[str, str]] = []
    for digits in [train_digits, *long_digits]:
        problems = held_out_problems(n, digits, train_digits, form)
        predicted = greedy_answers(model, tokenizer, ["\n" + ex.prompt for ex in problems], digits + 2, batch_size)
        true = [ex.answer for ex in problems]
        metrics[f"arith_acc_d{digits}"] = accuracy(predicted, true)
        if digits > train_digits:
            long_hits += list(zip(predicted, true, strict=True))
        rows += [ArithmeticPrediction(digits, ex.prompt, ex.answer, p) for ex, p in zip(problems, predicted,
                                                                                        strict=True)]
    metrics["arith_acc_in"] = metrics[f"arith_acc_d{train_digits}"]
    if long_hits:
        metrics["arith_acc_long"] = accuracy([p for p, _ in long_hits], [t for _, t in long_hits])
    return metrics, rows
