"""Language-modelling corpora: WikiText-2 and TinyShakespeare.

WikiText-2 (`wikitext-2`). Locally only the *tokenized* v1 files exist
(`wikitext2/valid.txt` = `wiki.valid.tokens`, `wikitext2/test.txt` = `wiki.test.tokens`);
the train split is missing. The local splits are therefore:

- `train`      = the first 90 % of the lines of valid.txt,
- `validation` = the last 10 % of the lines of valid.txt,
- `test`       = test.txt, untouched, so perplexities stay comparable with the literature.

If a needed local file is missing and `online_allowed()`, the split is fetched with
`datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)` and its rows joined
with "". Note the online splits are the real ones (full train) of the *raw* variant, so
numbers from the two sources are not comparable.

TinyShakespeare (`tinyshakespeare`): `tinyshakespeare/input.txt`, nanoGPT split:
`train` = first 90 % of the characters, `validation` = the rest, `test` = `validation`.
"""

from __future__ import annotations

import io
from pathlib import Path

from .registry import DataNotFoundError, local_file, online_allowed, register_dataset

WIKITEXT_HF = ("wikitext", "wikitext-2-raw-v1")
TRAIN_FRACTION = 0.9


def _split_lines(text: str, split: str) -> str:
    """`train`: first 90 % of the lines of `text`; `validation`: the remaining lines."""
    lines = io.StringIO(text, newline="\n").readlines()  # split on "\n" only
    cut = int(len(lines) * TRAIN_FRACTION)
    return "".join(lines[:cut] if split == "train" else lines[cut:])


def _wikitext_online(split: str) -> str:
    """Fetch a WikiText-2 raw split with Hugging Face `datasets` (imported lazily)."""
    from datasets import load_dataset  # only the online path needs `datasets`

    rows = load_dataset(*WIKITEXT_HF, split=split)
    return "".join(rows["text"])


@register_dataset("wikitext-2")
def wikitext2(split: str, root: Path) -> str:
    """WikiText-2 tokenized v1 (local: train/validation cut from valid.txt, test.txt)."""
    filename = "test.txt" if split == "test" else "valid.txt"
    path = root / "wikitext2" / filename
    if path.is_file():
        text = path.read_text(encoding="utf-8")
        return text if split == "test" else _split_lines(text, split)
    online = f"{WIKITEXT_HF[0]!r}/{WIKITEXT_HF[1]!r} (split {split!r})"
    if not online_allowed():
        raise DataNotFoundError.missing("wikitext-2", [path], online, "not tried, offline mode is set", root)
    try:
        return _wikitext_online(split)
    except Exception as exc:  # any import/network/hub failure means "not found"
        error = f"failed: {type(exc).__name__}: {exc}"
        raise DataNotFoundError.missing("wikitext-2", [path], online, error, root) from exc


@register_dataset("tinyshakespeare")
def tinyshakespeare(split: str, root: Path) -> str:
    """TinyShakespeare, nanoGPT split: first 90 % of characters train, rest validation=test."""
    text = local_file("tinyshakespeare", "tinyshakespeare", "input.txt", root=root).read_text(encoding="utf-8")
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut] if split == "train" else text[cut:]
