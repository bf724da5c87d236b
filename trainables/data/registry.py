"""Named text corpora, the data root, local JSON-lines files, and the error raised when data is missing.

Every corpus is a function `split -> str` registered under a name with
`@register_dataset(name, splits=...)`; `load_text(name, split)` checks the name and split
and calls it. The corpora themselves live in `corpora.py` (WikiText-2, TinyShakespeare),
`babi.py` and `arithmetic.py`; importing `trainables.data` registers all of them.

Local files are looked up under `data_root(root)`:

- `root`, when the caller passes one (an experiment's `data.root`, when its file or an
  override gives one: the same absolute path on every node);
- else `MOE_ORCH_DATA` (environment variable) of the process reading, so of the node it runs on
  (a local Ray's processes inherit the driver's), if set: a folder laid out like
  `../shared/data` (`wikitext2/test.txt`, `babi_en_1k/...`, `tinyshakespeare/input.txt`);
- otherwise `./data`, relative to the current working directory.

Online fallbacks (Hugging Face `datasets`) are tried only when `online_allowed()`.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_ENV = "MOE_ORCH_DATA"
OFFLINE_ENV = "MOE_ORCH_OFFLINE"
DEFAULT_SPLITS: tuple[str, ...] = ("train", "validation", "test")
_TRUE = {"1", "true", "yes", "on"}

TextLoader = Callable[[str, Path], str]  # (split, data root) -> text


def data_root(root: str | Path | None = None) -> Path:
    """The folder local datasets are read from: `root` if given, else `$MOE_ORCH_DATA`, else `./data` (cwd).

    The path is returned as given (made absolute, not required to exist); a missing file
    under it surfaces later as `DataNotFoundError`.
    """
    return Path(root or os.environ.get(DATA_ENV) or "data").expanduser().absolute()


def online_allowed() -> bool:
    """False when `MOE_ORCH_OFFLINE`, `HF_DATASETS_OFFLINE` or `HF_HUB_OFFLINE` is set to 1."""
    flags = (OFFLINE_ENV, "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    return not any(os.environ.get(f, "").strip().lower() in _TRUE for f in flags)


class DataNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor fetchable; the message says where we looked.

    Build one with `DataNotFoundError.missing(...)`. `tried` holds the local paths.
    """

    def __init__(self, message: str, tried: Sequence[Path] = ()) -> None:
        super().__init__(message)
        self.tried: tuple[Path, ...] = tuple(tried)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[type[DataNotFoundError], tuple[str, tuple[Path, ...]]]:
        # Ray ships exceptions between processes by pickling them.
        return (type(self), (str(self), self.tried))

    @classmethod
    def missing(
        cls,
        dataset: str,
        tried: Sequence[Path],
        online: str | None = None,
        online_error: BaseException | str | None = None,
        root: str | Path | None = None,
    ) -> DataNotFoundError:
        """The error for `dataset`, naming each path in `tried` and how to supply the data.

        `online` names the Hugging Face dataset that could be fetched instead (if any);
        `online_error` says why fetching it failed or was not tried.
        """
        root = data_root(root)
        shown = os.environ.get(DATA_ENV)
        rel = [_relative(p, root) for p in tried]
        lines = [f"dataset {dataset!r}: local data not found. Looked in:"]
        lines += [f"  {p}" for p in tried]
        lines.append(
            f"To supply it, set {DATA_ENV} to a folder containing {', '.join(rel)} "
            f"(now {DATA_ENV}={shown!r}, so the data root is {root}); "
            "the repository's ../shared/data has this layout."
        )
        if online is not None:
            lines.append(
                f"Or go online (unset {OFFLINE_ENV}/HF_DATASETS_OFFLINE) so Hugging Face `datasets` can fetch {online}."
            )
        if online_error is not None:
            lines.append(f"Online fallback: {online_error}")
        return cls("\n".join(lines), tried)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def local_file(dataset: str, *relative: str, root: str | Path | None = None) -> Path:
    """Return `data_root(root)/<relative...>`, or raise `DataNotFoundError` naming it."""
    path = data_root(root).joinpath(*relative)
    if not path.is_file():
        raise DataNotFoundError.missing(dataset, [path], root=root)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (gzip-compressed when its name ends in ``.gz``), blank lines skipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@dataclass(frozen=True)
class DatasetEntry:
    """A registered text corpus: its loader, valid splits and one-line description."""

    name: str
    loader: TextLoader
    splits: tuple[str, ...]
    description: str


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, splits: Sequence[str] = DEFAULT_SPLITS) -> Callable[[TextLoader], TextLoader]:
    """Decorator registering `loader(split, root) -> str` as the text corpus `name`.

    The loader's docstring's first line becomes the entry's description. Registering a
    name twice raises ValueError.
    """

    def decorate(loader: TextLoader) -> TextLoader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        doc = (loader.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = DatasetEntry(name, loader, tuple(splits), doc[0] if doc else "")
        return loader

    return decorate


def list_datasets() -> list[str]:
    """Sorted names of every registered text corpus."""
    return sorted(_REGISTRY)


def dataset_entry(name: str) -> DatasetEntry:
    """The registry entry for `name`; KeyError listing the known names if unknown."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")
    return _REGISTRY[name]


def dataset_splits(name: str) -> tuple[str, ...]:
    """The splits `load_text(name, ...)` accepts."""
    return dataset_entry(name).splits


def load_text(name: str, split: str, root: str | Path | None = None) -> str:
    """The text of corpus `name` for `split` (one string, ready for a tokenizer), read under `data_root(root)`.

    Raises KeyError for an unknown name (listing known names), ValueError for an unknown
    split (listing valid ones) and `DataNotFoundError` if the data cannot be found.
    """
    entry = dataset_entry(name)
    if split not in entry.splits:
        raise ValueError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(entry.splits)}")
    return entry.loader(split, data_root(root))
