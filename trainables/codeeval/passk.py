"""The unbiased pass@k estimator of Chen et al. (2021), and per-problem counts merged across DDP ranks.

Counts are ``{task_id: (n samples, c correct)}``; ``pass_at_k_scores`` averages ``pass_at_k`` over
problems, ``merge_counts`` joins the counts each rank gathered for its share of the problems.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)`` for ``c`` correct of ``n`` samples.

    Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms the large binomials.
    Returns 1.0 when ``n - c < k`` (every k-subset holds a correct sample).
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_scores(per_problem: Mapping[str, tuple[int, int]], k_values: Iterable[int]) -> dict[str, float]:
    """``{"pass@k": mean over problems of pass_at_k(n, c, k)}`` for each k no larger than every problem's n."""
    if not per_problem:
        return {}
    n_min = min(n for n, _ in per_problem.values())
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in per_problem.values()) / len(per_problem)
        for k in sorted(set(k_values))
        if 1 <= k <= n_min
    }


def merge_counts(parts: Iterable[Mapping[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
    """Union of per-rank ``{task_id: (n, c)}`` maps; a task seen twice must have the same counts."""
    merged: dict[str, tuple[int, int]] = {}
    for part in parts:
        for task_id, counts in part.items():
            counts = (int(counts[0]), int(counts[1]))
            if merged.setdefault(task_id, counts) != counts:
                raise ValueError(f"{task_id}: conflicting counts {merged[task_id]} and {counts}")
    return merged
