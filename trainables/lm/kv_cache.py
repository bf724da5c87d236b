"""A KV cache that a decode step appends to in place, for the generation engine.

Hugging Face's ``DynamicCache`` appends a step's keys and values with ``torch.cat``: every decode
step copies the whole cache of every layer (B x H x T x D floats, twice, per layer) into a fresh
tensor, so a step costs O(T) in copies and allocations. ``SlabCache`` keeps each layer's keys and
values in a preallocated slab ``(B, H, capacity, D)``; a step writes its column into the slab and
the layer's ``keys`` / ``values`` are views of the first ``length`` columns. When the slab is full it
is reallocated with headroom (``grown``: +50 %, at least 64 columns), so copies are amortized O(1)
per step.

The engine reshapes the batch between steps (rows join with their own prefill, finished rows leave,
columns no row needs are trimmed): it builds the new keys and values and hands them to
``SlabLayer.replace``, which copies them into a fresh slab with headroom.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


def grown(length: int) -> int:
    """A slab's capacity for ``length`` columns: room for at least 64 more, or half as many again."""
    return length + max(64, length // 2)


class SlabLayer(DynamicLayer):
    """One decoder layer's keys and values: views ``(B, H, length, D)`` of slabs ``(B, H, capacity, D)``."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_slab: torch.Tensor | None = None
        self._value_slab: torch.Tensor | None = None
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key_states`` / ``value_states`` (B, H, t, D) along time; the whole cache's views back."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._key_slab is None:
            self.replace(key_states, value_states)
            return self.keys, self.values
        t = key_states.shape[-2]
        if self.length + t > self._key_slab.shape[-2]:
            self.replace(self.keys, self.values, capacity=grown(self.length + t))
        self._key_slab[:, :, self.length:self.length + t] = key_states
        self._value_slab[:, :, self.length:self.length + t] = value_states
        self._view(self.length + t)
        return self.keys, self.values

    def replace(self, keys: torch.Tensor, values: torch.Tensor, capacity: int | None = None) -> None:
        """Make ``keys`` / ``values`` (B, H, T, D) the layer's whole cache, copied into fresh slabs of
        ``capacity`` columns (default ``grown(T)``)."""
        batch, heads, length, dim = keys.shape
        capacity = max(capacity or grown(length), length)
        key_slab = keys.new_empty((batch, heads, capacity, dim))
        value_slab = values.new_empty((batch, values.shape[1], capacity, values.shape[-1]))
        key_slab[:, :, :length] = keys
        value_slab[:, :, :length] = values
        self._key_slab, self._value_slab = key_slab, value_slab
        self.is_initialized = True
        self.device = keys.device
        self._view(length)

    def _view(self, length: int) -> None:
        self.length = length
        self.keys = self._key_slab[:, :, :length]
        self.values = self._value_slab[:, :, :length]

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        self._key_slab = self._value_slab = None
        self.length = 0
        super().reset()


class SlabCache(Cache):
    """A cache of ``SlabLayer``s, one added per decoder layer on first use (as ``DynamicCache`` does)."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=SlabLayer)
