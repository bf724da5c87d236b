"""Generated integer-arithmetic problems (`"123+45="` -> `"168"`), deterministic by seed.

Each operand is drawn uniformly from [0, 10**digits) (so it has *up to* `digits` digits,
no leading zeros), the operator uniformly from `ops`. Subtraction may go negative
(`"12-345="` -> `"-333"`). Problems are independent draws, so duplicates can occur.

The registered text corpus `arithmetic` holds `ARITHMETIC_EXAMPLES` 3-digit `+`/`-`
problems per split, one `prompt+answer` per line. Each split draws from its own seed,
derived from `ARITHMETIC_BASE_SEED` and the split name, so the splits do not share a
random stream (they are not guaranteed disjoint: a few identical problems are expected).
"""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .registry import DEFAULT_SPLITS, register_dataset

OPERATORS: dict[str, Callable[[int, int], int]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
}
ARITHMETIC_BASE_SEED = 1234
ARITHMETIC_EXAMPLES = 2000
ARITHMETIC_DIGITS = 3


@dataclass(frozen=True)
class ArithmeticExample:
    """One problem: `prompt` such as `"123+45="` and its `answer` such as `"168"`."""

    prompt: str
    answer: str

    def text(self) -> str:
        """`prompt + answer`, the form used for language-model training."""
        return self.prompt + self.answer


def arithmetic_examples(
    n: int, digits: int = 3, seed: int = 0, ops: Sequence[str] = ("+", "-")
) -> list[ArithmeticExample]:
    """`n` problems `a<op>b=` with a, b uniform in [0, 10**digits) and op from `ops`.

    The same arguments always give the same list (`random.Random(seed)`). Raises
    ValueError for n < 0, digits < 1, or an empty/unknown operator list (known: + - *).
    """
    if n < 0:
        raise ValueError(f"n: got {n}, expected >= 0")
    if digits < 1:
        raise ValueError(f"digits: got {digits}, expected >= 1")
    unknown = [op for op in ops if op not in OPERATORS]
    if not ops or unknown:
        raise ValueError(f"ops: got {list(ops)!r}, expected a non-empty subset of {list(OPERATORS)}")
    rng = random.Random(seed)
    high = 10**digits
    examples = []
    for _ in range(n):
        a, b, op = rng.randrange(high), rng.randrange(high), rng.choice(list(ops))
        examples.append(ArithmeticExample(f"{a}{op}{b}=", str(OPERATORS[op](a, b))))
    return examples


def split_seed(base_seed: int, split: str) -> int:
    """A 64-bit seed for `split`, derived from `base_seed` (stable across runs/processes)."""
    digest = hashlib.sha256(f"{base_seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@register_dataset("arithmetic", splits=DEFAULT_SPLITS)
def arithmetic(split: str, root: Path | None = None) -> str:
    """Generated 3-digit +/- problems, one `prompt+answer` per line, a seed per split."""
    examples = arithmetic_examples(ARITHMETIC_EXAMPLES, ARITHMETIC_DIGITS, split_seed(ARITHMETIC_BASE_SEED, split))
    return "\n".join(ex.text() for ex in examples)
