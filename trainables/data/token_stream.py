"""A corpus as one long token tensor, and random (x, y) language-modelling batches.

`random_batches` is nanoGPT's `get_batch`: B random windows of T+1 tokens, x the first T
and y the last T (the next token for every position of x).
"""

from __future__ import annotations

import torch

from .tokenizer import Tokenizer


def encode_corpus(text: str, tokenizer: Tokenizer) -> torch.Tensor:
    """Encode `text` (no bos/eos added) into a 1-D LongTensor of shape (N,)."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def random_batches(
    tokens: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample B windows from `tokens` (N,); return x, y of shape (B, T) with y = x shifted by 1.

    Start offsets are uniform in [0, N - T - 1] drawn from `generator` (on its own
    device); x and y live on `tokens.device`. Raises ValueError if N < T + 1 or if
    `tokens` is not 1-D, or for a non-positive batch/block size.
    """
    if tokens.dim() != 1:
        raise ValueError(f"tokens: expected a 1-D tensor, got shape {tuple(tokens.shape)}")
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size}, {block_size}")
    n = tokens.numel()
    if n < block_size + 1:
        raise ValueError(f"corpus of {n} tokens is shorter than block_size+1 = {block_size + 1}")
    starts = torch.randint(n - block_size, (batch_size,), generator=generator, device=generator.device).to(
        tokens.device
    )  # (B,)
    offsets = torch.arange(block_size + 1, device=tokens.device)  # (T+1,)
    windows = tokens[starts[:, None] + offsets[None, :]]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]  # (B, T), (B, T)
