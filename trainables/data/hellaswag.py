"""HellaSwag: the one reader of the local validation file, and its fixed train/eval split.

The local file ``<data root>/hellaswag/hellaswag_val.jsonl.gz`` holds the 10,042 validation
records ``{idx, ctx, label, endings}`` (``ctx`` is ``"<activity label>: <context>"``). HellaSwag's
test labels are not public, so the validation set is split here into a part that may train and a
part that is only evaluated (lm-eval's query form of a record: ``trainables.lm.lm_eval_tasks.hellaswag_doc``).

Train/eval split (fixed, documented, no leakage)
------------------------------------------------
Consecutive HellaSwag items come from the same video or article: an item's gold ending
often reappears verbatim in the context of its neighbour (1,326 such pairs; a per-item
random split would put 437 of them across train and eval). So the unit of the split is a
*group*: a maximal run of consecutive ``idx`` with the same activity label (7,417 groups,
at most 14 items). A group is *eval* iff ``sha256("moe-orch/hellaswag/v1:<first idx of the
group>")``, read as a big-endian integer from its first 8 bytes, is ``0 mod 5``; every
other group is *train*. Result on the 10,042 items: **eval 2,056** items (1,514 groups; 686
ActivityNet, 1,370 WikiHow), **train 7,986**. The rule depends on the data alone, never on
a random state, so it is the same on every machine and every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from trainables.data.registry import local_file, read_jsonl

HELLASWAG_FILE = ("hellaswag", "hellaswag_val.jsonl.gz")
HELLASWAG_SPLIT_SALT = "moe-orch/hellaswag/v1"
HELLASWAG_EVAL_ONE_IN = 5  # one group in five is eval
HellaSwagSplit = Literal["train", "eval"]


def hellaswag_records(data_root: str | Path | None = None) -> list[dict[str, Any]]:
    """All 10,042 local HellaSwag validation records ``{idx, ctx, label, endings}``, by ``idx``."""
    path = local_file("hellaswag", *HELLASWAG_FILE, root=data_root)
    return sorted(read_jsonl(path), key=lambda r: r["idx"])


def hellaswag_activity(record: dict[str, Any]) -> str:
    """The activity label of a local HellaSwag record (``ctx`` is ``"<activity>: <context>"``)."""
    return record["ctx"].split(": ", 1)[0]


def hellaswag_groups(records: Sequence[dict[str, Any]]) -> list[int]:
    """For each record (sorted by ``idx``), the ``idx`` opening its group.

    A group is a maximal run of consecutive records with the same activity label: the
    items cut from one video or article, which share text.
    """
    starts: list[int] = []
    previous: str | None = None
    for record in records:
        activity = hellaswag_activity(record)
        starts.append(record["idx"] if activity != previous else starts[-1])
        previous = activity
    return starts


def _is_eval_group(first_idx: int) -> bool:
    digest = hashlib.sha256(f"{HELLASWAG_SPLIT_SALT}:{first_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % HELLASWAG_EVAL_ONE_IN == 0


def hellaswag_parts(data_root: str | Path | None = None) -> dict[HellaSwagSplit, list[dict[str, Any]]]:
    """``{"train": [...], "eval": [...]}``: every local record in exactly one part (the module's rule)."""
    records = hellaswag_records(data_root)
    parts: dict[HellaSwagSplit, list[dict[str, Any]]] = {"train": [], "eval": []}
    for record, start in zip(records, hellaswag_groups(records), strict=True):
        parts["eval" if _is_eval_group(start) else "train"].append(record)
    return parts


def hellaswag_split(split: HellaSwagSplit, data_root: str | Path | None = None) -> list[dict[str, Any]]:
    """The fixed ``"train"`` (7,986) or ``"eval"`` (2,056) part of the local HellaSwag validation set.

    The rule (module docstring): whole activity runs go to one side, chosen by a salted
    sha256 of the run's first ``idx``; the two parts are disjoint and cover every record.

    Returns:
        raw records ``{idx, ctx, label, endings}`` sorted by ``idx``.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split: got {split!r}, expected 'train' or 'eval'")
    return hellaswag_parts(data_root)[split]
