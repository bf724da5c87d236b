"""The shared ARC-Easy and HellaSwag readers (``trainables.data.arc_easy``, ``trainables.data.hellaswag``):
the official ARC-Easy splits, and the fixed, leak-free HellaSwag train/eval split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support import SHARED_DATA

from trainables.data import DataNotFoundError
from trainables.data.arc_easy import arc_easy_records, correct_choice
from trainables.data.hellaswag import hellaswag_activity, hellaswag_records, hellaswag_split

HELLASWAG_EVAL_SIZE = 2056
HELLASWAG_TRAIN_SIZE = 7986
# sha256 of the eval idx list joined by ","; changes only if the split rule or the data change
HELLASWAG_EVAL_DIGEST = "3946f39802e465180a22b90376b7f71a3995a1e091f486ef035623277162db70"


@pytest.fixture(scope="module")
def data_root() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}: CI and the README expect ../shared/data beside the repo")
    return SHARED_DATA


def test_arc_easy_local_splits_have_the_official_sizes(data_root: Path) -> None:
    sizes = {split: len(arc_easy_records(split, data_root)) for split in ("train", "validation", "test")}
    assert sizes == {"train": 2251, "validation": 570, "test": 2376}


def test_hellaswag_split_is_disjoint_covering_and_stable(data_root: Path) -> None:
    all_idx = [r["idx"] for r in hellaswag_records(data_root)]
    train = [r["idx"] for r in hellaswag_split("train", data_root)]
    evaluation = [r["idx"] for r in hellaswag_split("eval", data_root)]
    assert len(all_idx) == 10042
    assert not set(train) & set(evaluation)
    assert sorted(train + evaluation) == sorted(all_idx)
    assert (len(evaluation), len(train)) == (HELLASWAG_EVAL_SIZE, HELLASWAG_TRAIN_SIZE)
    assert hashlib.sha256(",".join(map(str, evaluation)).encode()).hexdigest() == HELLASWAG_EVAL_DIGEST
    assert [r["idx"] for r in hellaswag_split("eval", data_root)] == evaluation  # same on a second call


def test_hellaswag_split_keeps_each_activity_run_on_one_side(data_root: Path) -> None:
    records = hellaswag_records(data_root)
    eval_idx = {r["idx"] for r in hellaswag_split("eval", data_root)}
    for before, after in zip(records, records[1:], strict=False):
        if hellaswag_activity(before) == hellaswag_activity(after):
            assert (before["idx"] in eval_idx) == (after["idx"] in eval_idx)
    # the reason: a gold ending often reappears verbatim in a neighbour's context
    for i, record in enumerate(records):
        gold = record["endings"][record["label"]]
        if record["idx"] not in eval_idx or len(gold) < 25:
            continue
        for other in records[max(0, i - 15) : i + 16]:
            assert other["idx"] in eval_idx or gold not in other["ctx"]


def test_hellaswag_split_reads_the_data_root_from_the_environment(
    data_root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOE_ORCH_DATA", str(data_root))
    assert len(hellaswag_split("eval")) == HELLASWAG_EVAL_SIZE
    monkeypatch.setenv("MOE_ORCH_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="hellaswag_val.jsonl.gz"):
        hellaswag_split("train")
    with pytest.raises(ValueError, match="split"):
        hellaswag_split("test", data_root)  # type: ignore[arg-type]


def test_arc_easy_correct_choice_is_the_answer_keys_text(data_root: Path) -> None:
    record = arc_easy_records("validation", data_root)[0]
    labels, texts = record["choices"]["label"], record["choices"]["text"]
    assert correct_choice(record) == texts[labels.index(record["answerKey"])]
    with pytest.raises(ValueError, match="split"):
        arc_easy_records("dev", data_root)
