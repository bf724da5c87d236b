"""Sliding-window perplexity of a causal LM over one long token stream.

Windows of ``T = block_size`` tokens start every ``stride`` tokens (default ``T // 2``).
The first window scores all its targets; every later window scores only the targets no
earlier window scored (its last ``stride`` positions), so each token of the stream is
predicted exactly once, and all but the first ``T - stride`` of them with at least
``T - stride`` tokens of context. ``stride = T`` gives disjoint windows (cheapest, worst
context); ``stride = 1`` gives full context for every token (T times the compute).
With the byte tokenizer this is a per-byte perplexity (not comparable to word-level
figures); ``bits_per_byte`` is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.more.evaluation.scoring import bits_per_token, perplexity


@dataclass(frozen=True)
class PerplexityResult:
    nll_sum: float  # total negative log-likelihood (nats)
    n_tokens: int  # predicted tokens (len(tokens) - 1)
    perplexity: float
    bits_per_token: float
    stride: int
    block_size: int


def window_plan(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` for a stream of ``n`` tokens.

    Inputs are ``tokens[begin:end]``, targets ``tokens[begin+1:end+1]``; the targets at
    window positions ``>= first_scored`` are scored. Every target index 1..n-1 is scored once.
    """
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride: got {stride}, expected 1 <= stride <= block_size ({block_size})")
    plan, scored_until, begin = [], 0, 0  # scored_until: last target index already scored
    while scored_until < n - 1:
        end = min(begin + block_size, n - 1)
        plan.append((begin, end, scored_until - begin))  # target at position i is index begin + i + 1
        scored_until = end
        begin += stride
    return plan


@torch.no_grad()
def sliding_window_perplexity(
    model: nn.Module, tokens: torch.Tensor, block_size: int, stride: int | None = None, batch_size: int = 32
) -> PerplexityResult:
    """Perplexity of ``model`` (returns ``.logits`` (B, T, V)) on ``tokens`` (N,), see the module docstring."""
    stride = stride or max(1, block_size // 2)
    plan = window_plan(tokens.numel(), block_size, stride)
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for window in plan:  # all windows but the last have length T: batch equal lengths together
        by_length.setdefault(window[1] - window[0], []).append(window)
    for windows in by_length.values():
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            x = torch.stack([tokens[b:e] for b, e, _ in chunk]).to(device)  # (B, T)
            y = torch.stack([tokens[b + 1 : e + 1] for b, e, _ in chunk]).to(device)  # (B, T)
            for row, (_, _, first) in enumerate(chunk):
                y[row, :first] = -100
            logits = model(x).logits  # (B, T, V)
            nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100,
                                   reduction="sum").item()
            count += int((y != -100).sum())
    return PerplexityResult(nll, count, perplexity(nll, count), bits_per_token(nll, count), stride, block_size)
