"""The MoRE evaluation suite: every task on one checkpoint, metrics + artifacts into a folder.

``run_suite(model, tokenizer, settings, out_dir, ...)`` runs the tasks named in
``settings.tasks`` (torch only; no Ray, no MLflow) and returns the scalar metrics:

==============  =========================================================================
task            metrics / artifacts
==============  =========================================================================
perplexity      ``wikitext_ppl`` (per byte), ``wikitext_bpb``, ``wikitext_tokens``:
                sliding window over WikiText-2 test (``perplexity.py``; stride default T/2)
babi            ``babi_qa2_acc``, ``babi_qa3_acc``: candidate ranking, exact match (``babi.py``)
arithmetic      ``arith_acc_in``, ``arith_acc_long``, ``arith_acc_d{D}``: greedy decoding on
                held-out problems, in-length vs longer operands (``arithmetic.py``)
generation      ``generation.txt``: a seeded sample for ``settings.generation_prompt``
(bAbI/arith)    ``predictions.csv``: task, context, question, true_answer, predicted_answer, correct
routing         ``routing_sankey.html`` + ``routing_sankey.png`` (the first test question of
                ``babi_tasks[0]``; the first WikiText window if ``babi_tasks`` is empty),
                ``expert_load.png`` over WikiText test windows (+ ``eval_load_cv``),
                ``routing_curves.png`` when a training history is given
==============  =========================================================================

plus ``metrics.json`` (everything above) and ``eval_time_s``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from orchestrator.schema import Section, setting
from trainables.data import ArithmeticFormat, Tokenizer, encode_corpus, load_babi, load_text
from trainables.data.arithmetic import DEFAULT_FORMAT
from trainables.data.mixture import ARITH_TRAIN_DIGITS
from trainables.more.evaluation.arithmetic import evaluate_arithmetic
from trainables.more.evaluation.babi import evaluate_babi
from trainables.more.evaluation.generation import generation_sample
from trainables.more.evaluation.perplexity import sliding_window_perplexity
from trainables.more.evaluation.routing import expert_load, load_cv, routing_trace
from trainables.more.model import MoRELM

TASKS = ("perplexity", "babi", "arithmetic", "generation", "routing")
METRICS = ("wikitext_ppl", "wikitext_bpb", "babi_qa2_acc", "babi_qa3_acc", "arith_acc_in", "arith_acc_long",
           "eval_load_cv", "eval_time_s")  # scalars a run gets from the suite (plus arith_acc_d{D}, wikitext_tokens)


ARTIFACTS = ("metrics.json", "predictions.csv", "generation.txt", "routing_sankey.html", "routing_sankey.png",
             "expert_load.png", "routing_curves.png")


@dataclass
class EvalSettings(Section):
    """What the suite runs and how much of each data set (small defaults: minutes on a laptop CPU)."""

    tasks: list[str] = setting(factory=lambda: list(TASKS), some_of=TASKS, doc="which parts of the suite run")
    batch_size: int = setting(32, ge=1, doc="sequences per forward pass")
    ppl_dataset: str = setting("wikitext-2", doc="the perplexity corpus")
    ppl_split: str = setting("test", doc="its split")
    ppl_stride: int | None = setting(None, ge=1, doc="sliding-window stride; null = block_size // 2")
    ppl_max_tokens: int | None = setting(16384, ge=1, doc="first N tokens of the split; null = all (~1.26M bytes "
                                                          "for WikiText-2 test)")
    babi_tasks: list[int] = setting(factory=lambda: [2, 3], items={"one_of": (2, 3), "expect": "2 or 3"},
                                    doc="bAbI tasks 2 and/or 3")
    babi_max_questions: int | None = setting(200, ge=1, doc="first N test questions per task; null = all 1,000")
    arith_n: int = setting(100, ge=1, doc="held-out problems per operand length")
    arith_long_digits: list[int] = setting(factory=lambda: [4, 5], items={"ge": 1, "expect": "lengths >= 1"},
                                           doc="operand lengths longer than data.arith_train_digits")
    generation_prompt: str = setting("The history of the", doc="the seeded sample's prompt")
    generation_tokens: int = setting(200, ge=1, doc="tokens sampled")
    generation_temperature: float = setting(0.8, gt=0, doc="sampling temperature")
    generation_top_k: int | None = setting(40, ge=1, doc="top-k sampling; null = the whole vocabulary")
    routing_batches: int = setting(4, ge=1, doc="WikiText test batches for the expert-load bars")
    seed: int = setting(0, doc="seeds sampling and held-out problems")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSettings:
        """Build from a dict, ignoring keys that are not settings (e.g. ``at_end``)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def write_predictions(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``predictions.csv``: the spec's evaluate_for_llm columns, plus the task and whether it was right."""
    columns = ["task", "context", "question", "true_answer", "predicted_answer", "correct"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_suite(
    model: MoRELM, tokenizer: Tokenizer, settings: EvalSettings, out_dir: str | Path,
    arith_train_digits: int = ARITH_TRAIN_DIGITS,
    history: Mapping[str, Sequence[tuple[int, float]]] | None = None, log: Callable[[str], None] = print,
    data_root: str | Path | None = None, arith_format: ArithmeticFormat = DEFAULT_FORMAT,
) -> dict[str, float]:
    """Run ``settings.tasks`` on ``model`` (eval mode, no grad); write artifacts to ``out_dir``; return metrics.

    ``arith_train_digits`` and ``arith_format`` (operators, reversed answers) are those of training.

    ``history``: ``{"routing/L{l}/S{s}/entropy": [(step, value), ...], ...}`` from training,
    for ``routing_curves.png``. Data is read under ``data_root`` (else ``$MOE_ORCH_DATA``).
    """
    from trainables.more import routing_plots

    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    block, tasks = model.cfg.block_size, set(settings.tasks)
    metrics: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    wiki: torch.Tensor | None = None
    if tasks & {"perplexity", "routing"}:
        wiki = encode_corpus(load_text(settings.ppl_dataset, settings.ppl_split, data_root), tokenizer)
        if settings.ppl_max_tokens is not None:
            wiki = wiki[: settings.ppl_max_tokens + 1]

    if "perplexity" in tasks:
        assert wiki is not None
        result = sliding_window_perplexity(model, wiki, block, settings.ppl_stride, settings.batch_size)
        metrics.update(wikitext_ppl=result.perplexity, wikitext_bpb=result.bits_per_token,
                       wikitext_tokens=result.n_tokens, wikitext_stride=result.stride)
        log(f"perplexity: {result.perplexity:.3f} per byte ({result.bits_per_token:.3f} bits/byte) over "
            f"{result.n_tokens} tokens, window {block}, stride {result.stride}")

    if "babi" in tasks:
        for task in settings.babi_tasks:
            acc, preds = evaluate_babi(model, tokenizer, task, block, settings.babi_max_questions, settings.batch_size,
                                       data_root)
            metrics[f"babi_qa{task}_acc"] = acc
            rows += [{**asdict(p), "correct": p.true_answer == p.predicted_answer} for p in preds]
            log(f"bAbI qa{task}: accuracy {acc:.3f} on {len(preds)} test questions (candidate ranking)")

    if "arithmetic" in tasks:
        arith, preds = evaluate_arithmetic(model, tokenizer, arith_train_digits, settings.arith_long_digits,
                                           settings.arith_n, settings.batch_size, arith_format)
        metrics.update(arith)
        rows += [{"task": f"arith_d{p.digits}", "context": "", "question": p.prompt, "true_answer": p.true_answer,
                  "predicted_answer": p.predicted_answer, "correct": p.true_answer == p.predicted_answer}
                 for p in preds]
        log("arithmetic: " + ", ".join(f"{k} {v:.3f}" for k, v in arith.items()))
    if rows:
        write_predictions(out / "predictions.csv", rows)

    if "generation" in tasks:
        text = generation_sample(model, tokenizer, settings.generation_prompt, settings.generation_tokens,
                                 settings.generation_temperature, settings.generation_top_k, settings.seed)
        (out / "generation.txt").write_text(text)
        log(f"generation: {text[:120]!r}...")

    if "routing" in tasks:
        assert wiki is not None
        if settings.babi_tasks:
            task = settings.babi_tasks[0]
            ids = tokenizer.encode(load_babi(task, "test", data_root)[0].prompt())[-block:]
            sample = f"first bAbI qa{task} test question"
        else:
            ids, sample = wiki[:block].tolist(), "first WikiText window"
        trace = routing_trace(model, ids, [tokenizer.decode([i]) for i in ids])
        routing_plots.sankey_html(trace, out / "routing_sankey.html", sample)
        routing_plots.sankey_png(trace, out / "routing_sankey.png", sample)
        starts = torch.arange(settings.routing_batches * settings.batch_size) * block
        starts = starts[starts + block <= wiki.numel()]
        windows = wiki[starts[:, None] + torch.arange(block)[None, :]]  # (N, T)
        load = expert_load(model, windows.split(settings.batch_size))
        routing_plots.load_bars_png(load, out / "expert_load.png", model.cfg.variant,
                                    f"{windows.numel()} WikiText test tokens")
        metrics["eval_load_cv"] = sum(load_cv(v) for v in load.values()) / len(load)
        if history and routing_plots.curves_png(history, out / "routing_curves.png", model.cfg.variant):
            log("routing: sankey, expert load and training curves written")
        else:
            log("routing: sankey and expert load written (no training history: no curves)")

    metrics["eval_time_s"] = time.time() - started
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
