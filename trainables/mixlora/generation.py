"""Streaming generation for the LM families (the family contract's ``generator``): an adapter
checkpoint or a bare base answers one prompt in the base's chat template, token by token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TextStreamer

from trainables.lm.base import load_base, to_device
from trainables.lm.instructions import chat_prompt
from trainables.lm.quantize import apply_weights
from trainables.mixlora.checkpoint import load_adapter


def generate(checkpoint_dir: Path | None, base: str | None, prompt: str, max_tokens: int,
             on_text: Callable[[str], None], temperature: float = 0.0, weights: str = "fp32",
             device: str = "cpu") -> str:
    """Generate up to ``max_tokens`` tokens for ``prompt`` (greedy when ``temperature`` is 0), handing each
    decoded piece to ``on_text`` as it arrives; returns the whole completion. ``weights``: ``fp32``, or
    ``int8`` / ``int4`` (the frozen base's linear layers as 8- / 4-bit weights, ``trainables.lm.quantize``); ``device``:
    ``cpu``, or ``cuda`` (bfloat16, ``trainables.lm.base.to_device``)."""
    if checkpoint_dir is not None:
        model, tokenizer = load_adapter(checkpoint_dir, inference=True)  # plain LoRA merged
    else:
        model, tokenizer = load_base(base or "", device=device)  # bfloat16 on cuda
    apply_weights(model, weights, device)
    to_device(model, device)  # a checkpoint's model: built on cpu, merged, then moved
    inputs = tokenizer(chat_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)  # (1, T)
    inputs = inputs.to(device)
    streamer = _CallbackStreamer(tokenizer, on_text)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    # in this thread, the one that loaded the model: one OpenMP team of workers (trainables/openmp.py)
    model.generate(**inputs, max_new_tokens=max_tokens, streamer=streamer, pad_token_id=tokenizer.pad_token_id,
                   **sampling)
    return "".join(streamer.pieces)


class _CallbackStreamer(TextStreamer):
    """Hugging Face's ``TextStreamer`` handing each decoded piece to ``on_text`` (and keeping it in
    ``pieces``) instead of printing it; the prompt and special tokens are skipped."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text, self.pieces = on_text, []

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.pieces.append(text)
            self.on_text(text)
