"""The gating network: a hashed word n-gram bag (fastText-style sentence representation) and an MLP.

The gate has its own tiny encoder rather than reading an expert's hidden states, so it is
tokenizer-independent, costs microseconds, and runs *before* the experts: with top-k
gating, an expert only runs on the inputs routed to it.

Sentence representation: the text is lower-cased and split into words/punctuation; every
word n-gram (n = 1..``ngrams``) is hashed (CRC32, stable across processes) into one of
``buckets`` embedding rows; the representation is the mean of those rows (``EmbeddingBag``).
The MLP maps it to one logit per expert.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn

from trainables.moe.losses import load_balance_loss

WORD_RE = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def ngram_buckets(text: str, buckets: int, ngrams: int) -> list[int]:
    """Bucket ids of every word n-gram (n = 1..ngrams) of ``text``; [] for a text without words."""
    words = WORD_RE.findall(text.lower())
    out = []
    for n in range(1, ngrams + 1):
        for i in range(len(words) - n + 1):
            out.append(zlib.crc32(" ".join(words[i:i + n]).encode()) % buckets)
    return out


class HashedNgramGate(nn.Module):
    """texts -> gate logits (B, E): mean of hashed n-gram embeddings, then Linear-GELU-Dropout-Linear."""

    def __init__(self, num_experts: int, buckets: int = 65536, ngrams: int = 2, embed_dim: int = 64,
                 hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.buckets, self.ngrams = buckets, ngrams
        self.embed = nn.EmbeddingBag(buckets, embed_dim, mode="mean")
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_experts))
        nn.init.normal_(self.embed.weight, std=0.1)

    def featurize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat bucket ids (N,) and per-text offsets (B,) for ``EmbeddingBag``."""
        ids: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(ngram_buckets(text, self.buckets, self.ngrams))
        device = self.embed.weight.device
        return torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(offsets, dtype=torch.long,
                                                                                 device=device)

    def forward(self, texts: list[str]) -> torch.Tensor:
        """Gate logits (B, E) for B texts (an empty text gets the zero representation)."""
        ids, offsets = self.featurize(texts)
        return self.mlp(self.embed(ids, offsets))  # (B, embed_dim) -> (B, E)


def gate_weights(logits: torch.Tensor, top_k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture weights and their logs from gate logits (B, E).

    Dense (``top_k`` None or E): ``softmax(logits)``. Top-k: softmax over the k largest
    logits, zero (log: -inf) elsewhere, so each row still sums to 1.
    Returns ``(weights (B, E), log_weights (B, E))``.
    """
    if top_k is None or top_k >= logits.shape[-1]:
        log_w = torch.log_softmax(logits, dim=-1)
        return log_w.exp(), log_w
    top_val, top_idx = logits.topk(top_k, dim=-1)  # (B, k)
    log_w = torch.full_like(logits, float("-inf")).scatter(-1, top_idx, torch.log_softmax(top_val, dim=-1))
    return log_w.exp(), log_w


def balance_loss(gate_probs: torch.Tensor, weights: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Switch load-balance loss ``E * sum_i f_i * P_i`` of the MoE core (``trainables.moe.losses``;
    unweighted, 1.0 when perfectly balanced).

    The routed experts of an input are its ``top_k`` largest weights (``weights`` (B, E)); a dense
    gate (``top_k`` None) counts its largest one, since every expert runs on every input. ``P_i``
    is the mean dense gate probability of expert i (``gate_probs`` (B, E)). Minimising it pushes
    the gate away from sending everything to one expert (gate collapse).
    """
    routed = weights.topk(top_k or 1, dim=-1).indices  # (B, k)
    return load_balance_loss(gate_probs, routed)
