"""Offline tokenizers that checkpoints can save and rebuild from a directory.

`ByteTokenizer` needs no vocabulary file and no network: ids 0..255 are the raw UTF-8
bytes of the text, and three special ids follow (pad, bos, eos). A checkpoint stores it
as a small `tokenizer.json`; `load_tokenizer(directory)` reads that file back and picks
the tokenizer class from its `"type"` field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

TOKENIZER_FILE = "tokenizer.json"


@runtime_checkable
class Tokenizer(Protocol):
    """What the data and model code need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Turn text into token ids."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Turn token ids back into text, skipping special ids."""
        ...

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` into `directory`; return the file's path."""
        ...


class ByteTokenizer:
    """Byte-level tokenizer: ids 0..255 are UTF-8 bytes, then pad=256, bos=257, eos=258.

    Any text round-trips exactly (`decode(encode(t)) == t`), non-ASCII included: a
    character simply becomes several byte ids. `vocab_size` is 259.
    """

    type_name: ClassVar[str] = "byte"
    num_bytes: ClassVar[int] = 256
    pad_id: int = 256
    bos_id: int = 257
    eos_id: int = 258
    vocab_size: int = 259

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Return the UTF-8 bytes of `text` as ids, optionally wrapped in bos/eos.

        >>> ByteTokenizer().encode("hé", add_eos=True)
        [104, 195, 169, 258]
        """
        ids = list(text.encode("utf-8"))
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Return the text for `ids`, skipping specials; broken UTF-8 becomes U+FFFD.

        Accepts any sequence of ints (a list, or a 1-D tensor's `.tolist()`).
        Raises ValueError for an id outside [0, vocab_size).
        """
        data = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < self.num_bytes:
                data.append(i)
            elif not self.num_bytes <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside [0, {self.vocab_size})")
        return data.decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-serialisable description written to `tokenizer.json`."""
        return {
            "type": self.type_name,
            "vocab_size": self.vocab_size,
            "pad_id": self.pad_id,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
        }

    def save(self, directory: str | Path) -> Path:
        """Write `directory/tokenizer.json` (creating the directory); return its path."""
        path = Path(directory) / TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> ByteTokenizer:
        """Rebuild from `to_dict()` output; ValueError if it describes another tokenizer."""
        tokenizer = cls()
        expected = tokenizer.to_dict()
        wrong = [f"{k}: got {spec.get(k)!r}, expected {v!r}" for k, v in expected.items() if spec.get(k) != v]
        if wrong:
            raise ValueError("tokenizer.json does not describe a ByteTokenizer: " + "; ".join(wrong))
        return tokenizer

    @classmethod
    def load(cls, directory: str | Path) -> ByteTokenizer:
        """Read `directory/tokenizer.json` written by `save`."""
        return cls.from_dict(_read_spec(directory))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(self.type_name)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


_TOKENIZER_TYPES: dict[str, type[ByteTokenizer]] = {ByteTokenizer.type_name: ByteTokenizer}


def _read_spec(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {Path(directory).resolve()}")
    spec = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(spec).__name__}")
    return spec


def load_tokenizer(directory: str | Path) -> ByteTokenizer:
    """Rebuild the tokenizer saved in `directory/tokenizer.json`, dispatching on its "type".

    Raises FileNotFoundError if the file is missing and ValueError for an unknown type.
    """
    spec = _read_spec(directory)
    kind = spec.get("type")
    if kind not in _TOKENIZER_TYPES:
        where = Path(directory) / TOKENIZER_FILE
        raise ValueError(f"unknown tokenizer type {kind!r} in {where}; known types: {sorted(_TOKENIZER_TYPES)}")
    return _TOKENIZER_TYPES[kind].from_dict(spec)
