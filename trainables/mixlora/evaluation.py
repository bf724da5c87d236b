"""The MixLoRA family's evaluator (the family contract's ``evaluator``): zero-shot ARC-Easy and
HellaSwag through lm-evaluation-harness (``trainables.lm.lm_eval_tasks``), on an adapter
checkpoint or on the bare base (``request.base``), for the zero-shot baseline."""

from __future__ import annotations

import json
import time
from typing import Any

from trainables.lm.base import load_base
from trainables.lm.lm_eval_tasks import evaluate_lm
from trainables.mixlora.checkpoint import load_adapter


def evaluate_checkpoint(request: Any) -> dict[str, float]:
    """Score ``request.checkpoint_dir`` (or ``request.base``) on ``request.settings.tasks``
    (an ``orchestrator.contract.EvalRequest``); writes ``metrics.json`` into ``request.out_dir``.

    Metrics: ``<task>/acc``, ``<task>/acc_norm`` and their ``_stderr``, ``<task>/n``, and
    ``eval_time_s``; the lm-eval version goes into ``metrics.json``.
    """
    settings = request.settings
    started = time.time()
    if request.checkpoint_dir is not None:
        model, tokenizer = load_adapter(request.checkpoint_dir)
        what = str(request.checkpoint_dir)
    else:
        model, tokenizer = load_base(request.base)
        what = f"the base {request.base}"
    request.log(f"lm-eval on {what}: {', '.join(settings.tasks)}, limit {settings.limit}, "
                f"chat template {'on' if settings.chat_template else 'off'}")
    results = evaluate_lm(model, tokenizer, tasks=settings.tasks, limit=settings.limit,
                          batch_size=settings.batch_size, data_root=request.data_root,
                          chat_template=settings.chat_template)
    metrics = {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
    metrics["eval_time_s"] = time.time() - started
    for task in settings.tasks:
        request.log(f"{task}: acc {metrics[f'{task}/acc']:.4f} ± {metrics[f'{task}/acc_stderr']:.4f}, "
                    f"acc_norm {metrics[f'{task}/acc_norm']:.4f} ± {metrics[f'{task}/acc_norm_stderr']:.4f} "
                    f"(n={int(metrics[f'{task}/n'])})")
    (request.out_dir / "metrics.json").write_text(json.dumps(
        {**metrics, "lm_eval_version": results.get("lm_eval_version"), "chat_template": settings.chat_template},
        indent=2))
    return metrics
