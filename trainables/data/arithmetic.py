"""Generated integer-arithmetic problems (`"123+45="` -> `"168"`), deterministic by seed.

Each operand is drawn uniformly from [0, 10**digits) (so it has *up to* `digits` digits,
no leading zeros), the operator uniformly from `ops`. Subtraction may go negative
(`"12-345="` -> `"-333"`). Problems are independent draws, so duplicates can occur.

`ArithmeticFormat` says which operators are drawn and whether the answer is written with
its digits reversed, least-significant first (`"123+45="` -> `"861"`; a sign stays in front:
`"-333"`). Reversed answers let a left-to-right decoder emit each digit after the digits
and carry it depends on (Lee et al. 2023, "Teaching Arithmetic to Small Transformers"),
which makes addition far easier to learn for a small model. With `pad` every operand is
zero-padded to a fixed width (`"5+43="` -> `"005+043="` at width 3), so the digits an answer
digit depends on sit at the same distance from it in every problem.

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
class ArithmeticFormat:
    """How problems are drawn and written: operators from `ops`, answers reversed or not, operands
    zero-padded (to the training operand length, or the problem's own when it is longer) or not."""

    ops: tuple[str, ...] = ("+", "-")
    reverse: bool = False
    pad: bool = False


DEFAULT_FORMAT = ArithmeticFormat()  # + and -, answers most-significant digit first


def reverse_answer(answer: str) -> str:
    """The digits of `answer` least-significant first, a leading sign kept in front: `"-120"` -> `"-021"`."""
    sign = "-" if answer.startswith("-") else ""
    return sign + answer[len(sign):][::-1]


@dataclass(frozen=True)
class ArithmeticExample:
    """One problem: `prompt` such as `"123+45="` and its `answer` such as `"168"`."""

    prompt: str
    answer: str

    def text(self) -> str:
        """`prompt + answer`, the form used for language-model training."""
        return self.prompt + self.answer


def arithmetic_examples(
    n: int, digits: int = 3, seed: int = 0, ops: Sequence[str] = ("+", "-"), reverse: bool = False,
    pad_to: int = 0,
) -> list[ArithmeticExample]:
    """`n` problems `a<op>b=` with a, b uniform in [0, 10**digits) and op from `ops`; with
    `reverse` the answers are written least-significant digit first (`reverse_answer`); operands
    are zero-padded to `pad_to` digits (0: no padding). Padding does not change the draws.

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
        answer = str(OPERATORS[op](a, b))
        prompt = f"{a:0{pad_to}d}{op}{b:0{pad_to}d}=" if pad_to else f"{a}{op}{b}="
        examples.append(ArithmeticExample(prompt, reverse_answer(answer) if reverse else answer))
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
