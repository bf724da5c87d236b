"""ARC-Easy and HellaSwag through lm-evaluation-harness, offline, on an in-memory causal LM.

``evaluate_lm(model, tokenizer, ...)`` scores any causal LM held in memory (a transformers
model, a PEFT-wrapped one, or a plain ``nn.Module`` whose ``forward(input_ids,
attention_mask)`` returns an object with ``.logits``) on the two tasks with lm-eval's own
evaluator, metrics (``acc``, ``acc_norm`` and their stderr) and prompt templates, and
returns a flat dict of numbers. Nothing touches the Hugging Face hub: the tasks read the
local files under the data root (``data_root`` argument, else ``$MOE_ORCH_DATA``, else
``./data``; see ``trainables.data.registry.data_root``).

Tasks (zero-shot, loglikelihood multiple choice, no chat template)
------------------------------------------------------------------
- ``arc_easy``: lm-eval's ``arc_easy`` (prompt ``"Question: {q}\\nAnswer:"``, the choices
  are the answer texts, target ``choices.label.index(answerKey)``), evaluated on the local
  ``arc_easy/test.jsonl`` (2,376 questions); train/validation are loaded as lm-eval's
  training/validation splits (unused at zero shot).
- ``hellaswag``: lm-eval's ``hellaswag`` (query ``"{activity}: {ctx_a} {Ctx_b}"``, choices
  the endings, both through lm-eval's own ``preprocess``), evaluated on the *eval part*
  of the local validation file (the fixed split of ``trainables.data.hellaswag``); the
  *train part* is lm-eval's training split and is what the training side may use
  (``hellaswag_split("train")``).

The local files are read by ``trainables.data.arc_easy`` and ``trainables.data.hellaswag``;
this module turns their records into lm-eval tasks.

The local HellaSwag file has ``idx, ctx, label, endings`` only: ``ctx`` already holds
``activity_label + ": " + ctx_a [+ " " + ctx_b]``, with ``ctx_b`` as upstream, i.e. *not*
capitalised. lm-eval builds its query as ``activity_label + ": " + ctx_a + " " +
ctx_b.capitalize()``, so ``hellaswag_doc`` restores that: when ``ctx`` does not end a
sentence (all 3,243 ActivityNet items, and only they: ``ctx_b`` is a fragment such as
``"he"`` or ``"the man"``), the text after the last sentence end (``". "``, ``"! "``,
``"? "``) is ``ctx_b`` and gets ``str.capitalize()``; when it ends with ``.``/``!``/``?``
(all 6,799 WikiHow items, whose ``ctx_b`` is empty) it is kept as is. Then lm-eval's
``preprocess`` runs on the query and on every ending, as lm-eval does; it strips the 18
WikiHow items whose link markup (``[pixie cut | ...]``) the local conversion kept. Checked
against the original records of the first items (tests).

The model adapter
-----------------
lm-eval's ``HFLM`` accepts an in-memory model but needs ``model.config``, ``.device`` and
``.tie_weights()`` (a plain ``nn.Module`` fails), leaves the model in eval mode, calls
``tie_weights()`` on it, and runs right-padded batches without an attention mask (so pad
tokens reach MoE routers). ``ModuleLM`` is our own ``lm_eval.api.model.TemplateLM``: lm-eval
splits each (context, continuation) pair into tokens exactly as for ``HFLM`` (trailing
spaces move to the continuation, the whole string is encoded and the context prefix cut
off); we then score the continuation tokens in length-sorted, right-padded batches *with*
an attention mask, and restore every submodule's train/eval mode afterwards. Its
loglikelihoods equal ``HFLM``'s on transformers models (tested).

Choices worth knowing
---------------------
- No chat template: these are loglikelihood tasks, and lm-eval's default
  (``apply_chat_template=False``) scores the raw prompt, as published base-model numbers
  do; an instruct model (SmolLM2-Instruct) is scored the same way.
- The tasks are built as lm-eval ``ConfigurableTask`` objects and handed to
  ``lm_eval.evaluator.evaluate``: ``simple_evaluate`` would build a ``TaskManager`` that
  indexes lm-eval's thousands of task YAML files (about 11 s) and reseeds Python's, NumPy's
  and torch's global RNGs, which a training loop calling us must not see.
- ``limit`` is lm-eval's: the first ``limit`` documents of the evaluated split.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import datasets
import torch
from lm_eval import evaluator
from lm_eval.api.model import TemplateLM
from lm_eval.api.task import ConfigurableTask
from torch import nn
from transformers import PreTrainedTokenizerBase

from trainables.data.arc_easy import ARC_EASY_SPLITS, arc_easy_records
from trainables.data.hellaswag import hellaswag_parts

TASKS: tuple[str, ...] = ("arc_easy", "hellaswag")
METRICS: tuple[str, ...] = ("acc", "acc_norm")

DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when the model config names no context size
_SENTENCE_END = re.compile(r"[.!?] ")


def lm_eval_version() -> str:
    """The installed lm-evaluation-harness version, e.g. ``"0.4.13"``."""
    return importlib.metadata.version("lm_eval")


# ---------------------------------------------------------------------------- HellaSwag in lm-eval's form


def _capitalize_ctx_b(ctx: str) -> str:
    """``ctx`` with its trailing ``ctx_b`` fragment capitalised, as lm-eval's query has it."""
    if ctx.endswith((".", "!", "?")):  # WikiHow: ctx_b is empty
        return ctx
    boundaries = list(_SENTENCE_END.finditer(ctx))
    if not boundaries:
        return ctx
    cut = boundaries[-1].end()
    return ctx[:cut] + ctx[cut:].capitalize()


def hellaswag_doc(record: dict[str, Any]) -> dict[str, Any]:
    """A local HellaSwag record in lm-eval's processed form.

    Returns:
        ``{idx, query, choices, gold, label}``: ``query`` and ``choices`` as lm-eval's
        ``hellaswag`` task builds them (capitalised ``ctx_b``, lm-eval's ``preprocess``),
        ``gold``/``label`` the index of the right ending.
    """
    from lm_eval.tasks.hellaswag.utils import preprocess  # lm-eval's own text clean-up

    return {
        "idx": record["idx"],
        "query": preprocess(_capitalize_ctx_b(record["ctx"])),
        "choices": [preprocess(ending) for ending in record["endings"]],
        "gold": int(record["label"]),
        "label": int(record["label"]),
    }


# ---------------------------------------------------------------------------- lm-eval tasks


def _acc_metrics() -> list[dict[str, Any]]:
    """lm-eval's ``metric_list`` of both tasks: mean ``acc`` and ``acc_norm``, higher is better."""
    return [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS]


def _arc_easy_dataset(data_root: str | Path | None, **_: Any) -> datasets.DatasetDict:
    """lm-eval ``custom_dataset`` hook (it passes the task metadata as keywords, ignored)."""
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_list(arc_easy_records(split, data_root)) for split in ARC_EASY_SPLITS}
    )


def _hellaswag_dataset(data_root: str | Path | None, **_: Any) -> datasets.DatasetDict:
    """Our train part as lm-eval's ``train`` split, our eval part as its ``validation`` split."""
    parts = hellaswag_parts(data_root)
    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([hellaswag_doc(r) for r in parts["train"]]),
            "validation": datasets.Dataset.from_list([hellaswag_doc(r) for r in parts["eval"]]),
        }
    )


def arc_easy_task(data_root: str | Path | None = None) -> ConfigurableTask:
    """lm-eval's ``arc_easy`` task over the local JSONL files, scored on ``test``."""
    return ConfigurableTask(
        config={
            "task": "arc_easy",
            "custom_dataset": functools.partial(_arc_easy_dataset, data_root),
            "training_split": "train",
            "validation_split": "validation",
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{choices.label.index(answerKey)}}",
            "doc_to_choice": "{{choices.text}}",
            "metric_list": _acc_metrics(),
            "num_fewshot": 0,
            "metadata": {"version": 1.0},
        }
    )


def hellaswag_task(data_root: str | Path | None = None) -> ConfigurableTask:
    """lm-eval's ``hellaswag`` task over the local file's eval part (its train part for few-shot)."""
    return ConfigurableTask(
        config={
            "task": "hellaswag",
            "custom_dataset": functools.partial(_hellaswag_dataset, data_root),
            "training_split": "train",
            "validation_split": "validation",
            "output_type": "multiple_choice",
            "doc_to_text": "{{query}}",
            "doc_to_target": "{{label}}",
            "doc_to_choice": "choices",
            "metric_list": _acc_metrics(),
            "num_fewshot": 0,
            "metadata": {"version": 1.0},
        }
    )


TASK_BUILDERS: dict[str, Callable[[str | Path | None], ConfigurableTask]] = {
    "arc_easy": arc_easy_task,
    "hellaswag": hellaswag_task,
}


# ---------------------------------------------------------------------------- the model adapter


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule gets its own train/eval flag back after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _context_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class ModuleLM(TemplateLM):
    """lm-eval's LM interface (loglikelihood only) over an in-memory causal LM.

    Args:
        model: any ``nn.Module`` with ``forward(input_ids=(B, T), attention_mask=(B, T))``
            returning ``.logits`` of shape ``(B, T, V)`` (HF CausalLM, PEFT, custom).
        tokenizer: its HF tokenizer; encoding uses the tokenizer's defaults, as ``HFLM`` does.
        batch_size: sequences (one per context/choice pair) per forward pass.
        max_length: context window; default the config's ``max_position_embeddings``
            (or ``n_positions``/``n_ctx``), else 2048. Longer inputs lose their left end.
        chat_template: score each choice as the assistant's answer to the context as a user
            turn (the tokenizer's chat template), the format ``trainables.lm.instructions`` trains
            on; off: lm-eval's plain ``context + continuation``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 8,
        max_length: int | None = None,
        chat_template: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size: got {batch_size}, expected >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length or _context_size(model)
        self._device = _model_device(model)
        self.chat_template = chat_template

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Stands in for an empty context: BOS, else EOS (as ``HFLM``)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of ``string``; ``None`` keeps the tokenizer's own special-token default."""
        if add_special_tokens is None:
            return self.tokenizer.encode(string)
        return self.tokenizer.encode(string, add_special_tokens=add_special_tokens)

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """lm-eval's tokenisation of (context, continuation) pairs, without its progress bar."""
        if self.chat_template:
            requests = [self._as_chat(request) for request in requests]
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _as_chat(self, request: Any) -> Any:
        """The request with its context as a user turn (+ the assistant header) and the continuation
        as the start of the assistant's answer (no leading space, as in training)."""
        context, continuation = request.args
        prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": context.strip()}], tokenize=False,
                                                    add_generation_prompt=True)
        return dataclasses.replace(request, arguments=(prompt, continuation.lstrip()))

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """``(sum log p(continuation | context), continuation is the greedy choice)`` per request."""
        windows = [self._window(context, continuation) for _, context, continuation in requests]
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))  # longest first: less padding
        scores: list[tuple[float, bool]] = [(0.0, True)] * len(windows)
        with _eval_mode(self.model), torch.no_grad():
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                for i, score in zip(batch, self._score_batch([windows[i] for i in batch]), strict=True):
                    scores[i] = score
        return scores

    def _window(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """``(input ids, target ids)``: the last ``max_length`` inputs predict the continuation."""
        if not continuation:
            raise ValueError("empty continuation: nothing to score")
        if len(continuation) > self.max_length:
            raise ValueError(f"continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
        whole = (context + continuation)[-(self.max_length + 1) :]
        return whole[:-1], continuation

    def _score_batch(self, windows: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        width = max(len(inputs) for inputs, _ in windows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(windows), width), pad, dtype=torch.long)  # (B, T), right-padded
        attention_mask = torch.zeros((len(windows), width), dtype=torch.long)  # (B, T)
        for row, (inputs, _) in enumerate(windows):
            input_ids[row, : len(inputs)] = torch.tensor(inputs)
            attention_mask[row, : len(inputs)] = 1
        output = self.model(input_ids=input_ids.to(self._device), attention_mask=attention_mask.to(self._device))
        logits = getattr(output, "logits", output)  # (B, T, V)
        scores = []
        for row, (inputs, targets) in enumerate(windows):
            end = len(inputs)
            logprobs = logits[row, end - len(targets) : end].float().log_softmax(-1)  # (n, V)
            target = torch.tensor(targets, device=logprobs.device)  # (n,)
            total = logprobs.gather(-1, target[:, None]).sum().item()
            greedy = bool((logprobs.argmax(-1) == target).all())
            scores.append((total, greedy))
        return scores

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = True) -> list[float]:
        raise NotImplementedError("ModuleLM scores multiple-choice tasks only (no perplexity tasks)")

    def generate_until(self, requests: list[Any], disable_tqdm: bool = True) -> list[str]:
        raise NotImplementedError("ModuleLM scores multiple-choice tasks only (no generation tasks)")


# ---------------------------------------------------------------------------- entry point


class _DropCustomDatasetNotice(logging.Filter):
    """Drops lm-eval's per-task notice that a ``custom_dataset`` takes ``--metadata`` (CLI advice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


@contextmanager
def _quiet_custom_dataset_notice() -> Iterator[None]:
    task_logger = logging.getLogger("lm_eval.api.task")
    notice_filter = _DropCustomDatasetNotice()
    task_logger.addFilter(notice_filter)
    try:
        yield
    finally:
        task_logger.removeFilter(notice_filter)


def _flatten(results: dict[str, Any], tasks: Sequence[str]) -> dict[str, float | int | str]:
    """``{"<task>/acc": ..., "<task>/acc_stderr": ..., "<task>/n": ..., "lm_eval_version": ...}``."""
    flat: dict[str, float | int | str] = {}
    for task in tasks:
        metrics = results["results"][task]
        for metric in METRICS:
            flat[f"{task}/{metric}"] = float(metrics[f"{metric},none"])
            flat[f"{task}/{metric}_stderr"] = float(metrics[f"{metric}_stderr,none"])
        flat[f"{task}/n"] = int(results["n-samples"][task]["effective"])
    flat["lm_eval_version"] = lm_eval_version()
    return flat


def evaluate_lm(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str] = TASKS,
    limit: int | None = None,
    batch_size: int = 8,
    data_root: str | Path | None = None,
    max_length: int | None = None,
    chat_template: bool = False,
    items_dir: Path | None = None,
) -> dict[str, float | int | str]:
    """Zero-shot ARC-Easy / HellaSwag accuracy of an in-memory causal LM, by lm-evaluation-harness.

    Args:
        model: HF CausalLM, PEFT-wrapped model, or any ``nn.Module`` with
            ``forward(input_ids, attention_mask) -> .logits`` (B, T, V); it runs on its own
            device and gets its train/eval modes back afterwards.
        tokenizer: the model's tokenizer (no chat template is applied).
        tasks: any of ``"arc_easy"``, ``"hellaswag"``.
        limit: score only the first ``limit`` items of each task (None: all: 2,376 ARC-Easy
            test questions, 2,056 HellaSwag eval items).
        batch_size: sequences per forward pass (each item is one sequence per choice).
        data_root: folder holding ``arc_easy/`` and ``hellaswag/`` (default ``$MOE_ORCH_DATA``,
            else ``./data``).
        max_length: context window override (default: the model config's).
        chat_template: score choices as the assistant's answer to the context in the
            tokenizer's chat template (``ModuleLM``); default lm-eval's plain format.
        items_dir: also write ``<task>_items.jsonl`` there: one ``{"doc_id", "acc", "acc_norm"}`` per
            item scored, in lm-eval's order, so two models can be compared item by item
            (``moe-orch compare``).
    Returns:
        ``{"<task>/acc", "<task>/acc_stderr", "<task>/acc_norm", "<task>/acc_norm_stderr"}``
        (floats in [0, 1]), ``"<task>/n"`` (items scored) per task, and
        ``"lm_eval_version"`` (str).
    """
    unknown = [t for t in tasks if t not in TASK_BUILDERS]
    if unknown or not tasks:
        raise ValueError(f"tasks: got {list(tasks)!r}, expected a non-empty subset of {list(TASK_BUILDERS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit: got {limit!r}, expected None or an int >= 1")
    lm = ModuleLM(model, tokenizer, batch_size=batch_size, max_length=max_length, chat_template=chat_template)
    with _quiet_custom_dataset_notice():
        task_objects = {name: TASK_BUILDERS[name](data_root) for name in tasks}  # reads the data
        results = evaluator.evaluate(
            lm=lm,
            task_dict={"tasks": task_objects, "groups": {}},
            limit=limit,
            log_samples=items_dir is not None,
        )
    if items_dir is not None:
        write_items(results, list(tasks), items_dir)
    return _flatten(results, list(tasks))


def write_items(results: dict[str, Any], tasks: Sequence[str], items_dir: Path) -> list[Path]:
    """``<task>_items.jsonl`` per task from lm-eval's logged samples: ``{"doc_id", "acc", "acc_norm"}``."""
    items_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in tasks:
        rows = sorted(results["samples"][task], key=lambda sample: sample["doc_id"])
        path = items_dir / f"{task}_items.jsonl"
        path.write_text("".join(json.dumps({"doc_id": int(r["doc_id"]), **{m: float(r[m]) for m in METRICS}}) + "\n"
                                for r in rows), encoding="utf-8")
        written.append(path)
    return written
