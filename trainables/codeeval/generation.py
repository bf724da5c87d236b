"""``n`` completions per prompt with Hugging Face ``generate``: the model's own tokens only, no logits shaping
(what this means and why: ``trainables.codeeval.evaluate``).

Batched generation pads on the left; row order is sorted by prompt length (stable) to waste
less compute on padding. Results are a deterministic function of (prompts, n, temperature,
seed, batch_size); the global torch RNG is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainables.codeeval.problems import truncate_at_stop


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    n: int = 1,
    temperature: float = 0.0,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    seed: int = 0,
    stop: Sequence[str] = (),
) -> list[list[str]]:
    """``n`` completions for each prompt: the decoded new tokens only, cut at the first stop string.

    Greedy when ``n == 1`` or ``temperature <= 0`` (then one generation per prompt, repeated
    ``n`` times: greedy samples are identical); otherwise sampling at ``temperature`` with
    ``top_p=1.0, top_k=0``. Never a repetition penalty. Prompts are tokenized without special
    tokens (a chat template already has them) and left-padded; the tokenizer's padding side,
    the model's train/eval mode and the global RNG are restored afterwards.

    Returns:
        ``completions[i][j]``: the j-th completion of ``prompts[i]``.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    greedy = n == 1 or temperature <= 0
    copies = 1 if greedy else n
    rows = [i for i in range(len(prompts)) for _ in range(copies)]  # row -> prompt index
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] if prompts else []
    order = sorted(range(len(rows)), key=lambda r: -lengths[rows[r]])  # stable: a prompt's copies stay in order
    texts: list[str] = [""] * len(rows)

    device = next(model.parameters()).device
    rng_devices = []  # fork_rng restores these CUDA generators (the CPU one always)
    if device.type == "cuda":
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
    }
    if greedy:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        options.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
    if stop:  # stop early (saves compute); the decoded text is cut at the stop strings again below
        options.update(stop_strings=list(stop), tokenizer=tokenizer)

    padding_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=rng_devices):
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                enc = tokenizer(
                    [prompts[rows[r]] for r in batch], return_tensors="pt", padding=True, add_special_tokens=False
                ).to(device)  # input_ids, attention_mask: (B, T), left-padded
                out = model.generate(**enc, **options)  # (B, T + new)
                new = out[:, enc["input_ids"].shape[1] :]  # (B, new): the model's own tokens only
                for r, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                    texts[r] = truncate_at_stop(text, stop)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)

    completions: list[list[str]] = [[] for _ in prompts]
    for r, i in enumerate(rows):
        completions[i].append(texts[r])
    return [c * n if greedy else c for c in completions]
