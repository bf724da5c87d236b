"""``IncrementalText`` (the engine's decoding of a row's completion, a few tokens at a time) gives, after
every appended token, exactly the whole decode of the tokens so far: with the byte-level tokenizer (any
byte sequence, invalid UTF-8 and special tokens included) and with SmolLM2's tokenizer (random ids, and
the ids of text whose characters span several tokens)."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import examples

from trainables.lm.base import byte_level_tokenizer, load_tokenizer, smollm2_available
from trainables.lm.detokenize import IncrementalText

pytestmark = pytest.mark.property
FUZZ = settings(max_examples=examples(200))  # the rest from the profile (tests/conftest.py)


class _Counting:
    """A tokenizer that remembers the longest list of ids it was asked to decode."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.longest = tokenizer, 0

    def decode(self, ids: list[int], **kwargs) -> str:
        self.longest = max(self.longest, len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def _check_every_prefix(tokenizer, ids: list[int]) -> int:
    """Check ``IncrementalText`` on every prefix of ``ids``; return the most ids it decoded at once."""
    counting = _Counting(tokenizer)
    text = IncrementalText(counting)
    for n in range(1, len(ids) + 1):
        assert text.of(ids[:n]) == tokenizer.decode(ids[:n], skip_special_tokens=True), ids[:n]
    return counting.longest


@functools.cache
def _byte_level():
    return byte_level_tokenizer()


@functools.cache
def _smollm2():
    return load_tokenizer("smollm2-135m-instruct")


@FUZZ
@given(st.lists(st.integers(0, len(_byte_level()) - 1), max_size=40))
def test_byte_level_every_prefix_decodes_as_a_whole(ids: list[int]) -> None:
    _check_every_prefix(_byte_level(), ids)


def test_a_character_split_across_tokens_is_held_until_complete() -> None:
    tokenizer = _byte_level()
    ids = tokenizer("é€😀a", add_special_tokens=False)["input_ids"]  # 2 + 3 + 4 bytes, a byte a token
    counting = _Counting(tokenizer)
    text = IncrementalText(counting)
    seen = [text.of(ids[:n]) for n in range(1, len(ids) + 1)]
    assert seen == ["\ufffd", "é", "é\ufffd", "é\ufffd", "é€", *["é€\ufffd"] * 3, "é€😀", "é€😀a"]
    assert text.committed == "é€😀a" and text.read_offset == len(ids)  # all committed once complete
    assert counting.longest == 3 + 4  # at most the committed character before (€) and the pending one (😀)


smollm2 = pytest.mark.skipif(not smollm2_available(), reason="SmolLM2's tokenizer is not installed here")
TEXTS = st.text(alphabet=st.sampled_from(list("ab é€日本語😀🎉\n\t.,'")), max_size=30)


@smollm2
@FUZZ
@given(st.lists(st.integers(0, 49151), max_size=30))
def test_smollm2_random_ids_every_prefix_decodes_as_a_whole(ids: list[int]) -> None:
    _check_every_prefix(_smollm2(), ids)


@smollm2
@FUZZ
@given(TEXTS)
def test_smollm2_text_every_prefix_decodes_as_a_whole(text: str) -> None:
    ids = _smollm2()(text, add_special_tokens=False)["input_ids"]
    assert _check_every_prefix(_smollm2(), ids) <= 8  # a few tokens at a time, however long the text
