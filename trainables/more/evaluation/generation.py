"""A generation sample for a fixed prompt (temperature + top-k sampling, seeded)."""

from __future__ import annotations

import torch

from trainables.data import Tokenizer
from trainables.more.model import MoRELM


@torch.no_grad()
def generation_sample(
    model: MoRELM, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 200,
    temperature: float = 0.8, top_k: int | None = 40, seed: int = 0,
) -> str:
    """``prompt`` + up to ``max_new_tokens`` sampled tokens, decoded (same text for the same seed)."""
    device = next(model.parameters()).device
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)  # (1, P)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen)
    return tokenizer.decode(out[0].tolist())
