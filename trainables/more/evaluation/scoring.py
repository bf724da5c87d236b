"""Scorers shared by the evaluation tasks: answer normalisation, exact match, accuracy, perplexity."""

from __future__ import annotations

import math
from collections.abc import Sequence

from trainables.training.metrics import perplexity_of


def normalize_answer(text: str) -> str:
    """Lower-case, strip surrounding whitespace and a trailing period: ``" Garden.\\n"`` -> ``"garden"``."""
    return text.strip().rstrip(".").strip().lower()


def exact_match(predicted: str, true: str) -> bool:
    """Whether ``predicted`` equals ``true`` after ``normalize_answer`` (so ``"-12"`` != ``"12"``)."""
    return normalize_answer(predicted) == normalize_answer(true)


def accuracy(predicted: Sequence[str], true: Sequence[str]) -> float:
    """Fraction of exact matches; 0.0 for empty lists. Raises ValueError on a length mismatch."""
    if len(predicted) != len(true):
        raise ValueError(f"got {len(predicted)} predictions for {len(true)} answers")
    if not true:
        return 0.0
    return sum(exact_match(p, t) for p, t in zip(predicted, true, strict=True)) / len(true)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """``exp(total negative log-likelihood / tokens)`` (capped at exp(50) to stay finite)."""
    if n_tokens <= 0:
        raise ValueError(f"n_tokens: got {n_tokens}, expected > 0")
    return perplexity_of(nll_sum / n_tokens)


def bits_per_token(nll_sum: float, n_tokens: int) -> float:
    """Mean negative log-likelihood in bits (bits per byte for the byte tokenizer)."""
    return nll_sum / n_tokens / math.log(2)
