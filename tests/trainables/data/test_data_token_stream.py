"""encode_corpus and random_batches: shapes, the one-token shift, determinism, errors."""

import pytest
import torch

from trainables.data import ByteTokenizer, encode_corpus, random_batches


def test_encode_corpus_is_1d_long() -> None:
    tokens = encode_corpus("héllo", ByteTokenizer())
    assert tokens.dtype == torch.long and tokens.shape == (6,)
    assert tokens.tolist() == list("héllo".encode())


def test_random_batches_shapes_and_shift() -> None:
    tokens = torch.arange(1000)
    x, y = random_batches(tokens, 8, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, x + 1)  # arange corpus: each next token is the id plus one
    assert int(x[:, 0].min()) >= 0 and int(y[:, -1].max()) <= 999


def test_random_batches_deterministic_by_generator() -> None:
    tokens = torch.randint(0, 259, (500,), generator=torch.Generator().manual_seed(1))
    a = random_batches(tokens, 4, 8, torch.Generator().manual_seed(3))
    b = random_batches(tokens, 4, 8, torch.Generator().manual_seed(3))
    c = random_batches(tokens, 4, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_exact_length_corpus_and_too_short() -> None:
    x, y = random_batches(torch.arange(9), 3, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.arange(8).expand(3, 8))
    assert torch.equal(y, torch.arange(1, 9).expand(3, 8))
    with pytest.raises(ValueError, match="block_size"):
        random_batches(torch.arange(8), 3, 8, torch.Generator())
