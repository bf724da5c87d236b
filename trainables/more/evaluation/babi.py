"""bAbI tasks 2 and 3 by ranking the candidate answers, scored by exact match.

Answering is *candidate ranking*, not free generation: the candidates of a task are all
the distinct answers of its train split (the six locations for qa2 and qa3). For each
question the model scores ``log p`` of each candidate's distinguishing prefix after the
prompt (``" " + answer`` up to the byte where it departs from every other candidate, see
``rank_candidates``), and the highest-scoring candidate is its answer, compared with the
true answer by exact match. The prompt is ``BabiExample.prompt()``
(``"<story so far>\\nQ: <question>\\nA:"``); when prompt + candidate is longer than the
model's block, the story is truncated from the left (the question is always kept), as
in training (``trainables.data.mixture``). Chance level is 1 / number of candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.data import BabiExample, Tokenizer, load_babi
from trainables.more.evaluation.scoring import accuracy


@dataclass(frozen=True)
class BabiPrediction:
    task: str  # "qa2" / "qa3"
    context: str
    question: str
    true_answer: str
    predicted_answer: str


def candidate_answers(task: int | str, root: str | Path | None = None) -> list[str]:
    """The distinct answers of the task's train split, sorted."""
    return sorted({ex.answer for ex in load_babi(task, "train", root)})


def distinguishing_lengths(candidates: Sequence[Sequence[int]]) -> list[int]:
    """For each candidate (token ids), the length of its shortest prefix no other candidate shares
    (its full length if it is a prefix of another candidate)."""
    out = []
    for i, c in enumerate(candidates):
        others = [o for j, o in enumerate(candidates) if j != i]
        u = next((u for u in range(1, len(c) + 1) if all(list(o[:u]) != list(c[:u]) for o in others)), len(c))
        out.append(u)
    return out


@torch.no_grad()
def rank_candidates(
    model: nn.Module, tokenizer: Tokenizer, prompts: Sequence[str], candidates: Sequence[str],
    block_size: int, batch_size: int = 32,
) -> torch.Tensor:
    """Score of each candidate after each prompt: (Q, C) log-probabilities.

    A candidate's score is ``log p`` of its first ``u`` tokens (``" " + answer``), ``u``
    being where it departs from every other candidate (``distinguishing_lengths``): for the
    bAbI locations ``" ba"``throom, ``" be"``droom, ``" g"``arden, ``" h"``allway, ... The
    bytes after that point cannot change which candidate they belong to, and leaving them
    out lets one forward pass score every candidate: the model reads the prompt followed by
    the few shared prefixes (``prompt + " b"`` for the locations) and all the needed
    probabilities are read off its logits. The prompt keeps its last
    ``block_size - longest prefix`` tokens (the story is cut from the left; the question stays).
    """
    device = next(model.parameters()).device
    cand_ids = [tokenizer.encode(" " + c) for c in candidates]
    lengths = distinguishing_lengths(cand_ids)
    # contexts after the prompt: the maximal ones among each candidate's c[:u-1] (the others are their prefixes)
    needed = {tuple(c[: u - 1]) for c, u in zip(cand_ids, lengths, strict=True)}
    contexts = sorted(s for s in needed if not any(o != s and o[: len(s)] == s for o in needed))
    which = [next(k for k, s in enumerate(contexts) if s[: u - 1] == tuple(c[: u - 1]))
             for c, u in zip(cand_ids, lengths, strict=True)]
    keep = block_size - max(len(s) for s in contexts)
    sequences = []  # (ids, prompt length) per (prompt, context)
    for prompt in prompts:
        head = tokenizer.encode(prompt)[-keep:]
        sequences += [(head + list(s), len(head)) for s in contexts]
    logps = []
    for i in range(0, len(sequences), batch_size):
        chunk = sequences[i : i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        x = torch.full((len(chunk), width), tokenizer.pad_id, dtype=torch.long)  # (B, W), right-padded
        for row, (ids, _) in enumerate(chunk):
            x[row, : len(ids)] = torch.tensor(ids)
        logps.append(model(x.to(device)).logits.float().log_softmax(-1).cpu())  # (B, W, V)
    scores = torch.empty(len(prompts), len(candidates))
    for q in range(len(prompts)):
        for j, (c, u) in enumerate(zip(cand_ids, lengths, strict=True)):
            flat = q * len(contexts) + which[j]
            logp = logps[flat // batch_size][flat % batch_size]  # (W, V)
            start = sequences[flat][1]  # logits at position p predict token p + 1
            scores[q, j] = logp[torch.arange(start - 1, start - 1 + u), torch.tensor(c[:u])].sum()
    return scores


def evaluate_babi(
    model: nn.Module, tokenizer: Tokenizer, task: int, block_size: int,
    max_questions: int | None = None, batch_size: int = 32, root: str | Path | None = None,
) -> tuple[float, list[BabiPrediction]]:
    """Exact-match accuracy on the first ``max_questions`` (None = all 1,000) test questions."""
    examples: list[BabiExample] = load_babi(task, "test", root)[:max_questions]
    candidates = candidate_answers(task, root)
    scores = rank_candidates(model, tokenizer, [ex.prompt() for ex in examples], candidates, block_size, batch_size)
    predicted = [candidates[j] for j in scores.argmax(dim=1).tolist()]
    rows = [BabiPrediction(f"qa{task}", " ".join(ex.context), ex.question, ex.answer, p)
            for ex, p in zip(examples, predicted, strict=True)]
    return accuracy(predicted, [ex.answer for ex in examples]), rows
