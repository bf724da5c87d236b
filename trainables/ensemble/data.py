"""SST-2 (GLUE) sentences and labels: local TSVs first, Hugging Face ``datasets`` as the fallback.

Local layout (``<data root>/sst2/``, as in ``../shared/data``): ``train.tsv`` and ``dev.tsv``
with a ``sentence<TAB>label`` header, ``test.tsv`` with ``index<TAB>sentence`` (unlabeled,
label -1). The split ``validation`` reads ``dev.tsv``. Without local files, and when online
access is allowed, ``datasets.load_dataset("glue", "sst2")`` is used.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from trainables.data import DataNotFoundError, data_root, online_allowed

FILES = {"train": "train.tsv", "validation": "dev.tsv", "dev": "dev.tsv", "test": "test.tsv"}


def load_sst2(split: str, root: str | Path | None = None) -> list[tuple[str, int]]:
    """``[(sentence, label)]`` of an SST-2 split (label -1 for the unlabeled test split)."""
    if split not in FILES:
        raise ValueError(f"sst2 has no split {split!r}; valid splits: train, validation, test")
    path = Path(root or data_root()) / "sst2" / FILES[split]
    if path.is_file():
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [(r["sentence"].strip(), int(r["label"]) if "label" in r else -1) for r in rows]
    if not online_allowed():
        raise DataNotFoundError.missing("sst2", [path], online="glue/sst2", online_error="offline mode is on")
    try:
        from datasets import load_dataset

        ds = load_dataset("glue", "sst2", split="validation" if split == "dev" else split)
    except Exception as exc:  # no network, no hub
        raise DataNotFoundError.missing("sst2", [path], online="glue/sst2", online_error=exc) from exc
    return [(r["sentence"].strip(), int(r["label"])) for r in ds]


def subset(examples: list[tuple[str, int]], limit: int | None, seed: int) -> list[tuple[str, int]]:
    """A seeded random subset of at most ``limit`` examples (all of them, shuffled, if None)."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out if limit is None else out[:limit]
