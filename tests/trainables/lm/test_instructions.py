"""The shared instruction data (``trainables.lm.instructions``): chat format, answer-only loss, seeded sources."""

from __future__ import annotations

import torch
from support import SHARED_DATA

from trainables.lm import instructions, load_base


def test_answer_tokens_only_carry_the_loss() -> None:
    _, tokenizer = load_base("tiny-llama")
    example = instructions.arc_examples("train", SHARED_DATA)[0]
    ids, labels = instructions.encode(tokenizer, example, max_length=512)
    answer = [t for t in labels if t != instructions.IGNORE]
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == example.answer.strip()
    prompt = tokenizer.decode(ids[:len(ids) - len(answer)])
    assert example.prompt in prompt and prompt.startswith(instructions.chat_prompt(tokenizer, "")[:5])
    short_ids, short_labels = instructions.encode(tokenizer, example, max_length=len(answer) + 3)
    assert len(short_ids) == len(answer) + 3 and [t for t in short_labels if t != instructions.IGNORE] == answer


def test_training_sources_are_local_and_seeded() -> None:
    sources = ["arc_easy", "hellaswag", "code_alpaca"]
    first = instructions.training_set(sources, 20, 0, SHARED_DATA)
    assert len(first) == 60 and first == instructions.training_set(sources, 20, 0, SHARED_DATA)
    encoded = [instructions.encode(load_base("tiny-llama")[1], ex, 64) for ex in first]
    batch = next(instructions.batches(encoded, 4, 0, torch.Generator().manual_seed(0)))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_arc_examples_answer_with_the_correct_choice_text() -> None:
    example = instructions.arc_examples("validation", SHARED_DATA)[0]
    assert example.prompt.startswith("Question: ") and example.prompt.endswith("\nAnswer:")
    assert example.answer and "\n" not in example.answer
