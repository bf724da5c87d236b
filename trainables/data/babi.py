"""bAbI tasks 2 and 3 (English, 1k examples per split), parsed from the v1.2 text format.

File format (`babi_en_1k/qa2_two-supporting-facts_train.txt`, ...): one line per item,
`ID sentence` for a story sentence and `ID question?<TAB>answer<TAB>supporting IDs` for a
question. The ID restarts at 1 with each new story; one story carries several questions,
and each question sees every story sentence before it (earlier questions are not part of
its context). Supporting IDs are the file's line IDs within the story (question lines are
numbered too), kept as they are in `BabiExample.supporting_facts`; `context_ids` holds
the line ID of each context sentence so the two can be matched.

Only `train` and `test` splits exist in the 1k release. `babi-qa2` / `babi-qa3` are also
registered as text corpora: the examples rendered as `prompt() + target()`, joined by "\\n".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .registry import local_file, register_dataset

BABI_DIR = "babi_en_1k"
BABI_FILES: dict[int, str] = {
    2: "qa2_two-supporting-facts",
    3: "qa3_three-supporting-facts",
}
BABI_SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(frozen=True)
class BabiExample:
    """One bAbI question with the story sentences before it.

    `supporting_facts` are the file's line IDs; `context_ids[i]` is the line ID of
    `context[i]` (empty if the example was built by hand).
    """

    context: tuple[str, ...]
    question: str
    answer: str
    supporting_facts: tuple[int, ...]
    context_ids: tuple[int, ...] = ()

    def prompt(self) -> str:
        """`"<context sentences joined by ' '>\\nQ: <question>\\nA:"`."""
        return f"{' '.join(self.context)}\nQ: {self.question}\nA:"

    def target(self) -> str:
        """The completion a model should produce after `prompt()`: `" " + answer`."""
        return f" {self.answer}"

    def text(self) -> str:
        """`prompt() + target()`, the form used for language-model training."""
        return self.prompt() + self.target()

    def supporting_sentences(self) -> tuple[str, ...]:
        """The context sentences named by `supporting_facts`, in that order."""
        by_id = dict(zip(self.context_ids, self.context, strict=True))
        return tuple(by_id[i] for i in self.supporting_facts)


def parse_babi(lines: Iterable[str]) -> list[BabiExample]:
    """Parse bAbI v1.2 lines into examples (one per question line, in file order).

    Raises ValueError naming the line number for a malformed line.
    """
    examples: list[BabiExample] = []
    story: list[tuple[int, str]] = []  # (line ID, sentence) of the current story
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        id_text, _, rest = line.partition(" ")
        if not id_text.isdigit() or not rest:
            raise ValueError(f"bAbI line {lineno}: expected 'ID text', got {line!r}")
        line_id = int(id_text)
        if line_id == 1:
            story = []
        if "\t" not in rest:
            story.append((line_id, rest.strip()))
            continue
        fields = rest.split("\t")
        if len(fields) != 3:
            raise ValueError(f"bAbI line {lineno}: expected 'question<TAB>answer<TAB>ids', got {line!r}")
        question, answer, support = (f.strip() for f in fields)
        examples.append(
            BabiExample(
                context=tuple(s for _, s in story),
                question=question,
                answer=answer,
                supporting_facts=tuple(int(i) for i in support.split()),
                context_ids=tuple(i for i, _ in story),
            )
        )
    return examples


def _task_number(task: int | str) -> int:
    """2, "2" or "qa2" -> 2 (likewise 3); ValueError for any other task."""
    text = str(task).strip().lower().removeprefix("qa")
    if not text.isdigit() or int(text) not in BABI_FILES:
        known = ", ".join(f"{n} / 'qa{n}'" for n in BABI_FILES)
        raise ValueError(f"unsupported bAbI task {task!r}; supported: {known}")
    return int(text)


def load_babi(task: int | str, split: str, root: str | Path | None = None) -> list[BabiExample]:
    """The examples of bAbI task 2 or 3 (`2`, `"2"`, `"qa2"`, ...) for `train` or `test`.

    Reads `data_root(root)/babi_en_1k/qa{2,3}_..._{split}.txt`; each real file gives 1000
    examples. Raises ValueError for an unknown task or split and `DataNotFoundError` if
    the file is missing.
    """
    number = _task_number(task)
    if split not in BABI_SPLITS:
        raise ValueError(f"bAbI has no split {split!r}; valid splits: {', '.join(BABI_SPLITS)}")
    name = f"{BABI_FILES[number]}_{split}.txt"
    path = local_file(f"babi-qa{number}", BABI_DIR, name, root=root)
    with path.open(encoding="utf-8") as f:
        return parse_babi(f)


def babi_text(task: int | str, split: str, root: str | Path | None = None) -> str:
    """The examples of `load_babi(task, split, root)` as `prompt()+target()` joined by "\\n"."""
    return "\n".join(ex.text() for ex in load_babi(task, split, root))


@register_dataset("babi-qa2", splits=BABI_SPLITS)
def babi_qa2(split: str, root: Path) -> str:
    """bAbI task 2 (two supporting facts) rendered as prompt+answer text."""
    return babi_text(2, split, root)


@register_dataset("babi-qa3", splits=BABI_SPLITS)
def babi_qa3(split: str, root: Path) -> str:
    """bAbI task 3 (three supporting facts) rendered as prompt+answer text."""
    return babi_text(3, split, root)
