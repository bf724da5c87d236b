"""``DynamicHybridRouter``: which LoRA experts carry a sequence, and how many.

Each active expert ``e`` has a *prototype* ``p_e``: the mean pooled prompt embedding of the data it
learned on. A sequence's feature ``x`` (the mean of its prompt tokens' input embeddings, centred on
the embedding table's mean and L2-normalised; ``pooled_features``) is routed by cosine similarity::

    probs = softmax(cos(x, p_e) / temperature)      over the active experts, (B, E)
    dense  (while any active expert is immature):   weights = probs          (collaboration)
    sparse (once every active expert is mature):    weights = one_hot(argmax) (delegation to one)

Why prototypes rather than a gradient-trained linear router: the stream carries one skill at a time
and no replay, so a trained router only ever sees the newest skill and learns to send *everything*
to the newest expert, old skills included. Prototypes of mature experts stay where their skill is
(only an immature expert's prototype follows the data routed to it, by EMA), so old skills keep
reaching their expert. The same probabilities give the novelty detector its entropy.

An expert is mature after ``maturity_steps`` steps since its birth or, with ``maturity: plateau``,
once its training loss stops improving (``ExpertManager`` decides; the router only holds the flags).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.moe import router_entropy

DENSE, SPARSE = "dense", "sparse"


def pooled_features(embeddings: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The routing feature of each sequence, (B, d): the mean input embedding over ``mask`` positions
    (the prompt), centred on the table's mean embedding and L2-normalised.

    Args:
        embeddings: the base's input embedding table, (V, d) (frozen).
        input_ids: (B, T) token ids.
        mask: (B, T) 1 on the positions to pool (a sequence with none pools all its tokens).
    """
    with torch.no_grad():
        mask = mask.to(embeddings.dtype)
        empty = mask.sum(1) == 0
        if empty.any():
            mask = mask.clone()
            mask[empty] = 1.0
        tokens = F.embedding(input_ids, embeddings)  # (B, T, d)
        mean = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # (B, d)
        return F.normalize(mean - embeddings.mean(0), dim=-1)


class DynamicHybridRouter(nn.Module):
    """Prototype router over up to ``max_experts`` slots (see the module docstring).

    Buffers (saved with the pool): ``prototypes`` (S, d), ``initialised`` (S,), ``mature`` (S,),
    ``active`` (): the number of active slots (slots ``0..active-1``).
    """

    def __init__(self, dim: int, max_experts: int, temperature: float, momentum: float) -> None:
        super().__init__()
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("prototypes", torch.zeros(max_experts, dim))
        self.register_buffer("initialised", torch.zeros(max_experts, dtype=torch.bool))
        self.register_buffer("mature", torch.zeros(max_experts, dtype=torch.bool))
        self.register_buffer("active", torch.zeros((), dtype=torch.long))

    @property
    def num_active(self) -> int:
        return int(self.active)

    @property
    def mode(self) -> str:
        """``dense`` while any active expert is immature, else ``sparse``."""
        n = self.num_active
        return SPARSE if n > 0 and bool(self.mature[:n].all()) else DENSE

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """Softmax over the active experts of cos(feature, prototype) / temperature, (B, E).

        Uninitialised prototypes (an expert born before it saw data) score 0 similarity.
        """
        n = self.num_active
        protos = F.normalize(self.prototypes[:n], dim=-1)  # (E, d); zero rows stay zero
        return torch.softmax(features @ protos.T / self.temperature, dim=-1)

    def route(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights, probs)``, each (B, E) over the active experts; weights per the current mode."""
        probs = self.probabilities(features)
        if self.mode == SPARSE and probs.shape[-1] > 1:
            weights = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        else:
            weights = probs
        return weights, probs

    @staticmethod
    def normalised_entropy(probs: torch.Tensor) -> float:
        """Mean over the batch of H(probs) / log E; 0 with a single expert."""
        return float(router_entropy(probs))

    @torch.no_grad()
    def add(self, slot: int, prototype: torch.Tensor | None) -> None:
        """Activate ``slot`` (the next one) immature, its prototype set from ``prototype`` (d,) if given."""
        assert slot == self.num_active, f"slot {slot} is not the next free one ({self.num_active})"
        self.active.fill_(slot + 1)
        self.mature[slot] = False
        if prototype is not None:
            self.prototypes[slot] = prototype
            self.initialised[slot] = True

    @torch.no_grad()
    def update_prototypes(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """EMA of each *immature* active expert's prototype toward the mean feature routed to it.

        Args:
            sums: (S, d) summed features of the sequences each slot won (all ranks).
            counts: (S,) how many sequences each slot won.
        """
        for slot in range(self.num_active):
            if counts[slot] <= 0 or self.mature[slot]:
                continue
            mean = sums[slot] / counts[slot]
            if not self.initialised[slot]:
                self.prototypes[slot] = mean
                self.initialised[slot] = True
            else:
                self.prototypes[slot].mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
