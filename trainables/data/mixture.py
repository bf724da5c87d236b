"""The MoRE training mixture: LM text + bAbI train + generated arithmetic, weights from the YAML.

A small LM trained on text alone scores about 0 on bAbI and arithmetic, so an experiment
that is evaluated on them trains on a mixture, set in its YAML::

    data:
      dataset: wikitext-2                              # the "lm" source: data.dataset's train split
      mixture: {lm: 0.5, babi: 0.3, arithmetic: 0.2}   # relative weights (normalised here)
      arith_train_digits: 3                            # operands of 1..3 digits in training

Every row of a batch picks its source independently, with probability weight / sum(weights);
a batch is therefore a mix of rows, each a (T+1)-token window of one source:

- ``lm``: a random window of the byte-encoded corpus (nanoGPT ``get_batch``), exactly the
  behaviour without a mixture.
- ``babi``: the train splits of bAbI tasks 2 and 3 (2,000 questions), each question rendered
  as ``BabiExample.text()`` = ``"<story so far>\\nQ: <question>\\nA: <answer>"`` plus ``"\\n"``,
  one after the other. A window always *ends* just after a random question's answer (its
  last target is the ``"\\n"`` after the answer), so every bAbI row trains one answer with
  as much of its story as fits in the block: the same left truncation that evaluation uses.
  A story shorter than the block is preceded by the tail of the previous question.
- ``arithmetic``: a fixed pool of ``a+b=c`` / ``a-b=c`` lines (``ARITH_POOL_PER_DIGIT``
  problems for each operand length 1..``arith_train_digits``, seed ``ARITH_TRAIN_SEED``),
  shuffled and joined by ``"\\n"``; random windows. ``ArithmeticFormat`` (YAML:
  ``data.arith_ops``, ``data.arith_reverse``, ``data.arith_pad``) picks the operators, whether
  answers are written least-significant digit first and whether operands are zero-padded to
  ``arith_train_digits``; evaluation uses the same format. Evaluation draws its held-out problems
  from another seed and drops any that are in this pool (``arithmetic_train_pool``).

The loss is the plain LM loss on every position of every row (no answer-only masking).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .arithmetic import DEFAULT_FORMAT, ArithmeticExample, ArithmeticFormat, arithmetic_examples
from .babi import load_babi
from .token_stream import random_batches
from .tokenizer import Tokenizer

MIXTURE_SOURCES = ("lm", "babi", "arithmetic")
BABI_TRAIN_TASKS = (2, 3)
ARITH_TRAIN_SEED = 2024
ARITH_VAL_SEED = 4048  # arithmetic_pool(..., seed=ARITH_VAL_SEED): validation lines in the training format
ARITH_POOL_PER_DIGIT = 5000
ARITH_TRAIN_DIGITS = 3  # default operand length of training arithmetic: 1..3 digits


def mixture_errors(mixture: Mapping[str, object] | None, arith_train_digits: object = ARITH_TRAIN_DIGITS) -> list[str]:
    """``data.mixture: got X, expected Y`` lines for a bad mixture (empty list when valid or None)."""
    if mixture is None:
        return []
    errors = []
    for key, weight in mixture.items():
        if key not in MIXTURE_SOURCES:
            errors.append(f"data.mixture.{key}: got an unknown source, expected one of {', '.join(MIXTURE_SOURCES)}")
        elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            errors.append(f"data.mixture.{key}: got {weight!r}, expected a number >= 0")
    weights = [w for w in mixture.values() if isinstance(w, (int, float)) and not isinstance(w, bool)]
    if not errors and not sum(weights) > 0:
        errors.append("data.mixture: got no positive weight, expected at least one of lm, babi, arithmetic > 0")
    if isinstance(arith_train_digits, bool) or not isinstance(arith_train_digits, int) or arith_train_digits < 1:
        errors.append(f"data.arith_train_digits: got {arith_train_digits!r}, expected an integer >= 1")
    return errors


def arithmetic_train_pool(max_digits: int, form: ArithmeticFormat = DEFAULT_FORMAT) -> list[ArithmeticExample]:
    """The arithmetic problems training sees: ``ARITH_POOL_PER_DIGIT`` per operand length 1..max_digits."""
    return arithmetic_pool(max_digits, form, ARITH_TRAIN_SEED)


def arithmetic_pool(max_digits: int, form: ArithmeticFormat, seed: int) -> list[ArithmeticExample]:
    """``ARITH_POOL_PER_DIGIT`` problems per operand length 1..max_digits in ``form``, shuffled (by ``seed``)."""
    pool: list[ArithmeticExample] = []
    for digits in range(1, max_digits + 1):
        pool += arithmetic_examples(ARITH_POOL_PER_DIGIT, digits, seed=seed + digits, ops=form.ops,
                                    reverse=form.reverse, pad_to=max_digits if form.pad else 0)
    random.Random(seed).shuffle(pool)
    return pool


def arithmetic_stream(pool: list[ArithmeticExample], tokenizer: Tokenizer) -> torch.Tensor:
    """The (N,) token ids of ``pool``'s lines, each ended by ``"\\n"``."""
    return torch.tensor(tokenizer.encode("\n".join(ex.text() for ex in pool) + "\n"), dtype=torch.long)


def babi_train_stream(
    tokenizer: Tokenizer, tasks: tuple[int, ...] = BABI_TRAIN_TASKS, root: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """bAbI train questions as one token stream (N,) and the index of each answer's last token (Q,)."""
    ids: list[int] = []
    ends: list[int] = []
    for task in tasks:
        for example in load_babi(task, "train", root):
            piece = tokenizer.encode(example.text())
            ids += piece
            ends.append(len(ids) - 1)
            ids += tokenizer.encode("\n")
    return torch.tensor(ids, dtype=torch.long), torch.tensor(ends, dtype=torch.long)


@dataclass
class Mixture:
    """Token streams of the sources in use and their sampling probabilities."""

    names: tuple[str, ...]  # sources with a positive weight, in MIXTURE_SOURCES order
    probs: torch.Tensor  # (S,) sums to 1
    streams: dict[str, torch.Tensor]  # name -> (N,) token ids
    babi_answer_ends: torch.Tensor | None  # (Q,) index into streams["babi"] of each answer's last token


def build_mixture(
    lm_tokens: torch.Tensor, weights: Mapping[str, float], arith_train_digits: int, tokenizer: Tokenizer,
    root: str | Path | None = None, arith_format: ArithmeticFormat = DEFAULT_FORMAT,
) -> Mixture:
    """Load the sources named with a positive weight in ``weights`` (``lm_tokens``: the (N,) LM corpus;
    ``arith_format``: operators and answer order of the arithmetic lines)."""
    errors = mixture_errors(weights, arith_train_digits)
    if errors:
        raise ValueError("invalid mixture:\n  " + "\n  ".join(errors))
    names = tuple(n for n in MIXTURE_SOURCES if weights.get(n, 0) > 0)
    probs = torch.tensor([float(weights[n]) for n in names])
    streams: dict[str, torch.Tensor] = {}
    ends = None
    if "lm" in names:
        streams["lm"] = lm_tokens
    if "babi" in names:
        streams["babi"], ends = babi_train_stream(tokenizer, root=root)
    if "arithmetic" in names:
        streams["arithmetic"] = arithmetic_stream(arithmetic_train_pool(arith_train_digits, arith_format), tokenizer)
    return Mixture(names, probs / probs.sum(), streams, ends)


def babi_windows(
    stream: torch.Tensor, answer_ends: torch.Tensor, n: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` windows that end just after a random answer: x, y of shape (n, T); y = x shifted by 1."""
    pick = torch.randint(answer_ends.numel(), (n,), generator=generator)  # (n,)
    # y's last position is the token after the answer's last token (the "\n")
    starts = (answer_ends[pick] + 1 - block_size).clamp(0, stream.numel() - block_size - 1)  # (n,)
    windows = stream[starts[:, None] + torch.arange(block_size + 1)[None, :]]  # (n, T+1)
    return windows[:, :-1], windows[:, 1:]


def mixture_batches(
    mixture: Mixture, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, T) batch x, y whose rows are drawn from the sources with ``mixture.probs``."""
    source = torch.multinomial(mixture.probs, batch_size, replacement=True, generator=generator)  # (B,)
    x = torch.empty(batch_size, block_size, dtype=torch.long)
    y = torch.empty(batch_size, block_size, dtype=torch.long)
    for s, name in enumerate(mixture.names):
        rows = (source == s).nonzero().flatten()
        if rows.numel() == 0:
            continue
        if name == "babi":
            assert mixture.babi_answer_ends is not None
            xs, ys = babi_windows(mixture.streams[name], mixture.babi_answer_ends, rows.numel(), block_size, generator)
        else:
            xs, ys = random_batches(mixture.streams[name], rows.numel(), block_size, generator)
        x[rows], y[rows] = xs, ys
    return x, y
