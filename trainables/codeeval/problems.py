"""MBPP and HumanEval problems from the shared data root, and the programs that test a completion.

- ``mbpp_problems`` / ``humaneval_problems`` load ``CodeProblem``s (``mbpp/mbpp.jsonl``,
  ``humaneval/HumanEval.jsonl.gz`` under ``trainables.data.data_root``);
- ``build_prompt``: MBPP in the tokenizer's chat template (one user turn), HumanEval as is;
- ``extract_code`` / ``truncate_at_stop``: the code of a chat answer, a completion cut at a stop string;
- ``build_program``: the program whose exit code decides whether a completion is correct
  (``trainables.codeeval.sandbox`` runs it).

Prompts:

- MBPP (standard test split, task ids 11-510): the model is a chat model trained on Code
  Alpaca rendered as a user turn -> assistant answer, so the prompt is the tokenizer's chat
  template around ``"{text}\\nYour code should pass these tests:\\n{asserts}"`` (the test asserts
  are shown, as in the MBPP paper). The code is the first fenced block of the answer
  (```` ```python ```` or bare ```` ``` ````; an unclosed fence runs to the end), the bare code
  before a closing fence, or the whole answer when it has no fence (``extract_code``).
  Program: ``test_setup_code + code + asserts``.
- HumanEval: plain completion of the problem's ``prompt`` (signature + docstring), no chat
  template; the completion is cut at the first Codex stop sequence (``HUMANEVAL_STOP``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainables.data.registry import local_file, read_jsonl

Kind = Literal["mbpp", "humaneval"]

MBPP_FILE = ("mbpp", "mbpp.jsonl")
HUMANEVAL_FILE = ("humaneval", "HumanEval.jsonl.gz")
MBPP_TEST_IDS = (11, 510)  # the standard MBPP test split (google-research README)
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")  # Codex paper stop sequences
FENCE = "```"


@dataclass(frozen=True)
class CodeProblem:
    """One benchmark problem.

    Attributes:
        task_id: "MBPP/11", "HumanEval/0", ...
        prompt: MBPP: the user message (task text + test asserts; the chat template is applied
            by ``build_prompt``); HumanEval: the code prompt (signature + docstring).
        tests: MBPP: the assert lines; HumanEval: the test code defining ``check(candidate)``.
        entry_point: the function under test (HumanEval); None for MBPP.
        kind: "mbpp" or "humaneval".
        setup: MBPP ``test_setup_code`` (usually empty).
        reference: the dataset's reference solution (MBPP ``code``, HumanEval ``canonical_solution``).
    """

    task_id: str
    prompt: str
    tests: str
    entry_point: str | None
    kind: Kind
    setup: str = ""
    reference: str = ""


# ----------------------------------------------------------------------------- problems


def mbpp_problems(
    root: str | Path | None = None,
    limit: int | None = None,
    ids: tuple[int, int] = MBPP_TEST_IDS,
    prompt_tests: int | None = None,
) -> list[CodeProblem]:
    """MBPP problems with ``ids[0] <= task_id <= ids[1]`` (default: the standard test split, 500 tasks).

    Args:
        root: data root (``trainables.data.data_root``); reads ``mbpp/mbpp.jsonl``.
        limit: keep only the first ``limit`` problems by task id (a documented subset, e.g.
            "MBPP test split, task ids 11-60" for ``limit=50``); None keeps all.
        ids: inclusive task-id range.
        prompt_tests: how many test asserts the prompt shows (None: all of ``test_list``, as the
            MBPP paper does). The program always runs all of them.
    """
    records = read_jsonl(local_file("mbpp", *MBPP_FILE, root=root))
    records = sorted((r for r in records if ids[0] <= int(r["task_id"]) <= ids[1]), key=lambda r: int(r["task_id"]))
    problems = []
    for r in records[:limit]:
        shown = r["test_list"][:prompt_tests]
        problems.append(
            CodeProblem(
                task_id=f"MBPP/{r['task_id']}",
                prompt=f"{r['text']}\nYour code should pass these tests:\n" + "\n".join(shown),
                tests="\n".join(r["test_list"]),
                entry_point=None,
                kind="mbpp",
                setup=r.get("test_setup_code") or "",
                reference=r["code"],
            )
        )
    return problems


def humaneval_problems(root: str | Path | None = None, limit: int | None = None) -> list[CodeProblem]:
    """The 164 HumanEval problems in file order (``humaneval/HumanEval.jsonl.gz``); ``limit`` keeps the first N."""
    records = read_jsonl(local_file("humaneval", *HUMANEVAL_FILE, root=root))
    return [
        CodeProblem(
            task_id=r["task_id"],
            prompt=r["prompt"],
            tests=r["test"],
            entry_point=r["entry_point"],
            kind="humaneval",
            reference=r["canonical_solution"],
        )
        for r in records[:limit]
    ]


# ----------------------------------------------------------------------------- prompts and programs


def build_prompt(problem: CodeProblem, tokenizer: Any) -> str:
    """The text the model continues: MBPP in the chat template (one user turn), HumanEval as is."""
    if problem.kind == "mbpp":
        messages = [{"role": "user", "content": problem.prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return problem.prompt


def truncate_at_stop(text: str, stop: Iterable[str]) -> str:
    """``text`` up to (excluding) the earliest occurrence of any stop string."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def extract_code(text: str) -> str:
    """The code in a chat answer: the first fenced block, else the whole text.

    - No fence: the whole answer (the model wrote bare code, as Code Alpaca answers are).
    - The first fence is bare (no language tag) and the text before it is Python with at least
      one statement other than a bare expression (``def``, ``import``, an assignment, ...): the
      answer began with bare code and this fence closes it, so that code is returned.
    - Otherwise the block the first fence opens (the rest of its line is the language tag), up
      to the next fence; an unclosed fence runs to the end.
    """
    start = text.find(FENCE)
    if start < 0:
        return text
    newline = text.find("\n", start)
    tag = text[start + len(FENCE) : newline if newline >= 0 else len(text)].strip()
    head = text[:start]
    if not tag and _has_code(head):
        return head
    if newline < 0:
        return ""
    body = text[newline + 1 :]
    end = body.find(FENCE)
    return body if end < 0 else body[:end]


def _has_code(text: str) -> bool:
    """``text`` parses as Python and has a statement other than a bare expression (prose rarely does)."""
    if not text.strip():
        return False
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(not isinstance(node, ast.Expr) for node in tree.body)


def build_program(problem: CodeProblem, completion: str) -> str:
    """The program whose exit code decides whether ``completion`` is correct.

    MBPP: ``setup + extract_code(completion) + asserts``. HumanEval (the official harness):
    ``prompt + completion + test + check(entry_point)``; the completion is expected to be
    already cut at the stop sequences.
    """
    if problem.kind == "mbpp":
        return f"{problem.setup}\n{extract_code(completion)}\n{problem.tests}\n"
    return f"{problem.prompt}{completion}\n{problem.tests}\ncheck({problem.entry_point})\n"
