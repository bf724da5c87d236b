"""Datasets and tokenizers shared by the model families (torch + stdlib only).

- `ByteTokenizer` / `load_tokenizer`: offline byte-level tokenizer saved in checkpoints.
- `load_text(name, split)`: registered text corpora (`list_datasets()`): `wikitext-2`,
  `tinyshakespeare`, `babi-qa2`, `babi-qa3`, `arithmetic`.
- `load_babi(task, split)`: bAbI tasks 2 and 3 as `BabiExample`s.
- `arithmetic_examples(...)`: generated arithmetic problems (`ArithmeticFormat`: operators, reversed answers).
- `encode_corpus` / `random_batches`: token tensors and nanoGPT-style (x, y) batches.
- `arc_easy.arc_easy_records`, `hellaswag.hellaswag_split`: the one reader of each benchmark's local
  files (the HellaSwag split into train and eval parts is fixed there).

Local data is read from `$MOE_ORCH_DATA` (default `./data`); see `registry.py`.
"""

from . import corpora  # noqa: F401  (registers wikitext-2 and tinyshakespeare)
from .arithmetic import ArithmeticExample, ArithmeticFormat, arithmetic_examples, reverse_answer
from .babi import BabiExample, load_babi, parse_babi
from .registry import (
    DataNotFoundError,
    data_root,
    dataset_splits,
    list_datasets,
    load_text,
    online_allowed,
    register_dataset,
)
from .token_stream import encode_corpus, random_batches
from .tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "ArithmeticExample",
    "ArithmeticFormat",
    "BabiExample",
    "ByteTokenizer",
    "DataNotFoundError",
    "Tokenizer",
    "arithmetic_examples",
    "data_root",
    "dataset_splits",
    "encode_corpus",
    "list_datasets",
    "load_babi",
    "load_text",
    "load_tokenizer",
    "online_allowed",
    "parse_babi",
    "random_batches",
    "register_dataset",
    "reverse_answer",
]
