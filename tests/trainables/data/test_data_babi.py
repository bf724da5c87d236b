"""bAbI tasks 2 and 3: the real files parse to 1000 examples each, with correct content."""

from pathlib import Path

import pytest
from support import SHARED_DATA

from trainables.data import BabiExample, load_babi, load_text, parse_babi


@pytest.fixture(autouse=True)
def shared_data(monkeypatch: pytest.MonkeyPatch) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real data not found at {SHARED_DATA}: CI and the README expect ../shared/data beside the repo")
    monkeypatch.setenv("MOE_ORCH_DATA", str(SHARED_DATA))
    return SHARED_DATA


@pytest.mark.parametrize("task", [2, 3, "qa2", "qa3"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_each_file_has_1000_examples(task: int | str, split: str) -> None:
    examples = load_babi(task, split)
    assert len(examples) == 1000
    assert all(ex.question.endswith("?") and ex.answer and ex.context for ex in examples)
    n_facts = 2 if str(task).endswith("2") else 3
    assert all(len(ex.supporting_facts) == n_facts for ex in examples)
    # every supporting fact is a sentence of the example's own context
    assert all(len(ex.supporting_sentences()) == n_facts for ex in examples)


def test_first_qa2_train_example() -> None:
    first, second = load_babi(2, "train")[:2]
    assert first.context == (
        "Mary moved to the bathroom.",
        "Sandra journeyed to the bedroom.",
        "Mary got the football there.",
        "John went to the kitchen.",
        "Mary went back to the kitchen.",
        "Mary went back to the garden.",
    )
    assert (first.question, first.answer, first.supporting_facts) == ("Where is the football?", "garden", (3, 6))
    assert first.supporting_sentences() == ("Mary got the football there.", "Mary went back to the garden.")
    assert first.prompt() == " ".join(first.context) + "\nQ: Where is the football?\nA:"
    assert first.target() == " garden"
    # second question of the same story: lines 1-13 minus the question at line 7
    assert len(second.context) == 12 and second.context_ids[6] == 8
    assert (second.answer, second.supporting_facts) == ("garden", (12, 6))
    assert second.supporting_sentences() == ("Mary dropped the football.", first.context[5])


def test_first_qa3_train_example() -> None:
    first, second = load_babi("qa3", "train")[:2]
    assert len(first.context) == 24 and first.context_ids == tuple(range(1, 25))
    assert first.question == "Where was the football before the bathroom?"
    assert (first.answer, first.supporting_facts) == ("office", (23, 17, 5))
    assert len(second.context) == 26  # 24 + lines 26 and 27; the question at 25 is not context


def test_parse_resets_story_at_id_1() -> None:
    lines = [
        "1 A went home.\n",
        "2 Where is A? \thome\t1\n",
        "1 B went out.\n",
        "2 B came in.\n",
        "3 Where is B? \tin\t2\n",
    ]
    assert parse_babi(lines) == [
        BabiExample(("A went home.",), "Where is A?", "home", (1,), (1,)),
        BabiExample(("B went out.", "B came in."), "Where is B?", "in", (2,), (1, 2)),
    ]
    with pytest.raises(ValueError, match="line 1"):
        parse_babi(["no id here\n"])


def test_bad_task_or_split() -> None:
    with pytest.raises(ValueError, match="qa2"):
        load_babi(7, "train")
    with pytest.raises(ValueError, match="train, test"):
        load_babi(2, "validation")


def test_registered_text_is_prompt_plus_target_lines() -> None:
    text = load_text("babi-qa2", "train")
    examples = load_babi(2, "train")
    assert text == "\n".join(ex.prompt() + ex.target() for ex in examples)
    assert text.count("\nQ: ") == 1000
