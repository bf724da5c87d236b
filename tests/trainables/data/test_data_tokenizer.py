"""ByteTokenizer: exact round trips (non-ASCII included), specials, save/load."""

import json
from pathlib import Path

import pytest

from trainables.data import ByteTokenizer, load_tokenizer

TEXTS = ["", "hello world", "héllo wörld — naïve café", "日本語テキスト", "emoji 🚀🤖\n\ttabs"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert len(ids) == len(text.encode("utf-8")) + 2
    assert tok.decode(ids) == text


def test_ids_are_utf8_bytes_and_specials_are_skipped() -> None:
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259)
    assert tok.encode("é") == [0xC3, 0xA9]
    assert tok.decode([tok.pad_id, 104, tok.bos_id, 105, tok.eos_id, tok.pad_id]) == "hi"
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character is replaced
    with pytest.raises(ValueError, match="259"):
        tok.decode([259])


def test_save_and_load(tmp_path: Path) -> None:
    path = ByteTokenizer().save(tmp_path / "ckpt")
    spec = json.loads(path.read_text())
    assert spec == {"type": "byte", "vocab_size": 259, "pad_id": 256, "bos_id": 257, "eos_id": 258}
    for loaded in (load_tokenizer(tmp_path / "ckpt"), ByteTokenizer.load(tmp_path / "ckpt")):
        assert isinstance(loaded, ByteTokenizer)
        assert loaded.decode(loaded.encode("ça va")) == "ça va"


def test_load_rejects_unknown_type_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"type": "sentencepiece"}))
    with pytest.raises(ValueError, match="sentencepiece"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nowhere")
