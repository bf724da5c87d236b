"""ARC-Easy (AI2 Reasoning Challenge, easy set): the one reader of the local files.

``<data root>/arc_easy/{train,validation,test}.jsonl`` hold the official splits (2,251 / 570 /
2,376 questions), one record per line::

    {"id": "Mercury_7220990", "question": "...", "choices": {"text": [...], "label": ["A", ...]},
     "answerKey": "B"}

Users: lm-eval's ``arc_easy`` task (``trainables.lm.lm_eval_tasks``), the instruction data
(``trainables.lm.instructions``) and the LLM-judge family's questions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainables.data.registry import local_file, read_jsonl

ARC_EASY_DIR = "arc_easy"
ARC_EASY_SPLITS: tuple[str, ...] = ("train", "validation", "test")


def arc_easy_records(split: str = "test", data_root: str | Path | None = None) -> list[dict[str, Any]]:
    """ARC-Easy records ``{id, question, choices: {text, label}, answerKey}`` of one split, in file order.

    Raises:
        ValueError: unknown split.
        DataNotFoundError: ``<data root>/arc_easy/<split>.jsonl`` is missing.
    """
    if split not in ARC_EASY_SPLITS:
        raise ValueError(f"split: got {split!r}, expected one of {', '.join(ARC_EASY_SPLITS)}")
    return read_jsonl(local_file("arc_easy", ARC_EASY_DIR, f"{split}.jsonl", root=data_root))


def correct_choice(record: dict[str, Any]) -> str:
    """The text of the record's correct choice (the one labelled ``answerKey``)."""
    choices = record["choices"]
    return choices["text"][choices["label"].index(record["answerKey"])]
