"""Instruction data for the LM families: ARC-Easy, HellaSwag (train part) and Code Alpaca, rendered
with the base's chat template, with the loss on the answer tokens only.

Each example is a prompt (one user turn) and an answer (the assistant turn):

- ``arc_easy`` (``<root>/arc_easy/train.jsonl``, read by ``trainables.data.arc_easy``):
  ``Question: {question}\\nAnswer:`` -> the text of the correct choice. The evaluation
  (``trainables.lm.lm_eval_tasks``) scores each choice's text after the same prompt in the same
  chat template, so training and scoring agree;
- ``hellaswag``: the context -> the correct ending, from the fixed *train* part of the local
  validation file (``trainables.data.hellaswag.hellaswag_split``; the eval part never trains);
- ``code_alpaca`` (``<root>/code_alpaca/code_alpaca_2k.json``): instruction (+ input) -> output.

``encode`` turns an example into token ids and labels (-100 on the prompt), ``batches`` pads
random draws into (B, T) tensors.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainables.data import data_root
from trainables.data.arc_easy import arc_easy_records, correct_choice
from trainables.data.hellaswag import hellaswag_split

IGNORE = -100  # label of a token the loss skips
SOURCES = ("arc_easy", "hellaswag", "code_alpaca")


@dataclass(frozen=True)
class Example:
    """One instruction example: the user turn and the assistant's answer (the only tokens with a loss)."""

    prompt: str
    answer: str


def arc_prompt(question: str) -> str:
    """lm-eval's ARC prompt: ``Question: {question}\\nAnswer:``."""
    return f"Question: {question}\nAnswer:"


def arc_examples(split: str, root: str | Path | None = None) -> list[Example]:
    """ARC-Easy ``train`` / ``validation`` / ``test`` as (question, correct choice text)."""
    return [Example(arc_prompt(row["question"]), correct_choice(row)) for row in arc_easy_records(split, root)]


def hellaswag_examples(split: str, root: str | Path | None = None) -> list[Example]:
    """The ``train`` or ``eval`` part of the local HellaSwag validation file as (context, correct ending)."""
    from trainables.lm.lm_eval_tasks import hellaswag_doc  # imports lm-eval: only when HellaSwag is asked for

    docs = [hellaswag_doc(row) for row in hellaswag_split(split, root)]  # lm-eval's own query and endings
    return [Example(doc["query"], doc["choices"][doc["gold"]]) for doc in docs]


def code_alpaca_examples(root: str | Path | None = None) -> list[Example]:
    """Code Alpaca 2k: instruction (and input, if any) -> output."""
    rows = json.loads((data_root(root) / "code_alpaca" / "code_alpaca_2k.json").read_text())
    return [Example(r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else ""), r["output"]) for r in rows]


def load_examples(source: str, root: str | Path | None = None) -> list[Example]:
    """The training examples of ``source`` (one of ``SOURCES``)."""
    if source == "arc_easy":
        return arc_examples("train", root)
    if source == "hellaswag":
        return hellaswag_examples("train", root)
    if source == "code_alpaca":
        return code_alpaca_examples(root)
    raise ValueError(f"unknown source {source!r}; expected one of {', '.join(SOURCES)}")


def training_set(sources: list[str], max_per_source: int | None, seed: int,
                 root: str | Path | None = None) -> list[Example]:
    """A seeded shuffle of at most ``max_per_source`` examples from each source."""
    rng = random.Random(seed)
    out: list[Example] = []
    for source in sources:
        examples = load_examples(source, root)
        rng.shuffle(examples)
        out += examples[:max_per_source]
    rng.shuffle(out)
    return out


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """The prompt as one user turn with the generation prompt (the assistant turn's header) after it."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def encode(tokenizer: Any, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example: chat-formatted prompt, then answer + end of turn.

    Labels are ``IGNORE`` on the prompt, so the loss covers the answer tokens only; an example
    longer than ``max_length`` loses the start of its prompt, never its answer.
    """
    prompt_ids = tokenizer(chat_prompt(tokenizer, example.prompt), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    answer_ids = answer_ids[:max_length - 1]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``, each (B, T)."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        labels[i, :len(row_labels)] = torch.tensor(row_labels)
        mask[i, :len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(encoded: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
            generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of ``batch_size`` examples drawn with ``generator``, reshuffled every epoch."""
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield collate([encoded[j] for j in order[i:i + batch_size]], pad_id)
