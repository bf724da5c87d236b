"""MoRE's evaluator for the family contract: the evaluation suite on one checkpoint directory."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from trainables.data import ArithmeticFormat
from trainables.data.arithmetic import DEFAULT_FORMAT
from trainables.data.mixture import ARITH_TRAIN_DIGITS
from trainables.more.checkpoint import load_checkpoint
from trainables.more.evaluation.suite import EvalSettings, run_suite


def evaluate_checkpoint(request: Any) -> dict[str, float]:
    """Run the suite on ``request.checkpoint_dir`` (an ``orchestrator.contract.EvalRequest``).

    Arithmetic is judged in-length vs longer against the operand length the model was trained
    on (the checkpoint's ``arith_train_digits``; the training default for checkpoints without it),
    in its format (``arith_ops``, ``arith_reverse``, ``arith_pad``; default: ``+``/``-``, plain). Adds the
    parameter counts.
    """
    model, tokenizer, metadata = load_checkpoint(request.checkpoint_dir)
    settings = EvalSettings(**{f.name: getattr(request.settings, f.name) for f in fields(EvalSettings)})
    digits = int(metadata.get("arith_train_digits") or ARITH_TRAIN_DIGITS)
    form = ArithmeticFormat(tuple(metadata.get("arith_ops") or DEFAULT_FORMAT.ops),
                            bool(metadata.get("arith_reverse")), bool(metadata.get("arith_pad")))
    metrics = run_suite(model, tokenizer, settings, request.out_dir, arith_train_digits=digits,
                        history=request.history, log=request.log, data_root=request.data_root, arith_format=form)
    metrics["num_parameters"] = model.num_parameters()
    metrics["num_active_parameters"] = model.num_active_parameters()
    return metrics
