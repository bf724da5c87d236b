"""Questions for the LLM-judge MoE, and the ground truth that grades an answer.

- ``arc_easy``: a multiple-choice science question; the expert starts with the letter. The letter
  is extracted from the text (``extract_choice``) and compared with the answer key;
- ``mbpp``: a Python task with its asserts; the code in the answer runs with the asserts in the
  shared sandbox (``trainables.codeeval``: own process group, limits, no network) and passes or not;
- ``prompts``: open prompts from a JSONL file (``{"prompt": ..., "context": ...}`` per line, the
  tutorial's use): no ground truth, so the external reward must be the tutorial's random one.

Splits: ARC-Easy's own (train / validation / test); MBPP by task id as upstream: train 601-974,
validation 511-600, test 11-510.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.data.arc_easy import arc_easy_records

ARC_SYSTEM = ("You are an expert. Answer the multiple-choice question: start with the letter of the correct "
              "choice, then explain in one sentence.")
MBPP_SYSTEM = "You are an expert Python programmer. Answer with the code only, in one ```python block."
MBPP_SPLITS = {"train": (601, 974), "validation": (511, 600), "test": (11, 510)}
DATASETS = ("arc_easy", "mbpp", "prompts")


@dataclass(frozen=True)
class Question:
    """One iteration's input: the experts' messages, the judges' background, and how to grade it."""

    id: str
    kind: str  # arc_easy | mbpp | prompts
    messages: list[dict[str, str]]
    context: str  # what the judges read as the background
    answer: str | None = None  # arc_easy: the answer key
    labels: tuple[str, ...] = ()  # arc_easy: the choice labels
    problem: Any = None  # mbpp: the trainables.codeeval.CodeProblem

    @property
    def gradable(self) -> bool:
        return self.kind != "prompts"


def load_questions(dataset: str, split: str, limit: int | None, root: str | None, seed: int = 0,
                   prompts_file: str | None = None, shuffle: bool = True) -> list[Question]:
    """``limit`` questions of ``dataset``/``split`` (shuffled with ``seed`` first when ``shuffle``)."""
    if dataset == "arc_easy":
        questions = _arc(split, root)
    elif dataset == "mbpp":
        questions = _mbpp(split, root)
    else:
        questions = _prompts(Path(prompts_file or ""))
    if shuffle:
        random.Random(seed).shuffle(questions)
    return questions[:limit] if limit is not None else questions


def _arc(split: str, root: str | None) -> list[Question]:
    questions = []
    for row in arc_easy_records(split, root):
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        body = row["question"] + "\n" + "\n".join(f"{label}. {text}" for label, text in zip(labels, texts, strict=True))
        questions.append(Question(row["id"], "arc_easy", [{"role": "system", "content": ARC_SYSTEM},
                                                         {"role": "user", "content": body}],
                                  body, row["answerKey"], tuple(labels)))
    return questions


def _mbpp(split: str, root: str | None) -> list[Question]:
    from trainables.codeeval import mbpp_problems

    problems = mbpp_problems(root, ids=MBPP_SPLITS[split])
    return [Question(p.task_id, "mbpp", [{"role": "system", "content": MBPP_SYSTEM},
                                         {"role": "user", "content": p.prompt}], p.prompt, problem=p)
            for p in problems]


def _prompts(path: Path) -> list[Question]:
    questions = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            row = json.loads(line)
            context = row.get("context") or ""
            user = f"{context}\n\n{row['prompt']}" if context else row["prompt"]
            questions.append(Question(f"prompt-{i}", "prompts", [{"role": "user", "content": user}],
                                      context or row["prompt"]))
    return questions


def extract_choice(text: str, labels: tuple[str, ...]) -> str | None:
    """The choice an answer gives: "the answer is B", a leading "B." / "(B)", else the first "B." / "B)"."""
    alternatives = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    for pattern in (rf"answer\s*(?:is|:)?\s*\(?({alternatives})\b",
                    rf"^\s*\(({alternatives})\)",  # "(B) ..."
                    rf"^\s*({alternatives})(?:[.):]|\s*$)",  # "B. ..." (not "A mirror")
                    rf"(?<!\w)\(?({alternatives})[.)](?!\w)"):
        match = re.search(pattern, text, flags=re.IGNORECASE if pattern.startswith("answer") else 0)
        if match:
            found = match.group(1)
            return next((label for label in labels if label.lower() == found.lower()), found)
    return None


def grade(question: Question, text: str) -> bool | None:
    """Whether ``text`` answers ``question`` correctly (None: no ground truth). Runs MBPP code in the
    sandbox, so call it off the event loop."""
    if question.kind == "arc_easy":
        return extract_choice(text, question.labels) == question.answer
    if question.kind == "mbpp":
        from trainables.codeeval import build_program, run_program

        return run_program(build_program(question.problem, text), timeout_s=10.0).status == "passed"
    return None
