"""Is A better than B on the same examples? Two paired tests, shared by the families' evaluations
(the ensemble against its best expert, the LLM judge's selection against a random expert, ...).

Both compare two systems A and B by their per-example outcomes on one evaluation set (tensors of
shape (N,), the same examples in the same order):

- ``paired_bootstrap_ci``: a percentile confidence interval of mean(A) - mean(B), resampling
  examples with replacement (the pair of outcomes of an example stays together); outcomes are
  correctness (bool) or any per-example score, e.g. a random expert's expected correctness;
- ``mcnemar_p``: the exact two-sided McNemar test, a binomial test on the discordant examples
  (A right and B wrong, against A wrong and B right).
"""

from __future__ import annotations

import math

import torch


def paired_bootstrap_ci(a_correct: torch.Tensor, b_correct: torch.Tensor, resamples: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """``(low, high)``: the ``confidence`` percentile interval of mean(A) - mean(B) (accuracies, for bools)."""
    if a_correct.shape != b_correct.shape or a_correct.dim() != 1 or len(a_correct) == 0:
        raise ValueError(f"expected two equal, non-empty 1-d tensors, got {tuple(a_correct.shape)} "
                         f"and {tuple(b_correct.shape)}")
    diff = a_correct.float() - b_correct.float()  # (N,) in [-1, 1]
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(diff), (resamples, len(diff)), generator=generator)  # (R, N)
    means = diff[index].mean(dim=1)  # (R,)
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail])).tolist()
    return low, high


def mcnemar_p(a_correct: torch.Tensor, b_correct: torch.Tensor) -> float:
    """Exact two-sided McNemar p-value of two bool tensors (1.0 when the two never disagree)."""
    a_only = int((a_correct & ~b_correct).sum())
    b_only = int((~a_correct & b_correct).sum())
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # P(X <= k), X ~ Binomial(n, 1/2)
    return min(1.0, 2 * tail)
