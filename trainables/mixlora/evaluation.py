"""The MixLoRA family's evaluator (the family contract's ``evaluator``): zero-shot ARC-Easy and
HellaSwag through lm-evaluation-harness (``trainables.lm.lm_eval_tasks``), on an adapter
checkpoint or on the bare base (``request.base``), for the zero-shot baseline.

For a MixLoRA checkpoint it also draws the router pictures (``trainables.mixlora.routing``):
``expert_load.png`` + ``routing.json`` (expert load, entropy and CV per layer on ARC-Easy test,
HellaSwag eval and Code Alpaca examples) and, when the run has a training history,
``routing_curves.png``."""

from __future__ import annotations

import json
import time
from typing import Any

from trainables.lm import instructions
from trainables.lm.base import load_base, to_device
from trainables.lm.lm_eval_tasks import evaluate_lm
from trainables.lm.quantize import apply_weights
from trainables.mixlora import routing
from trainables.mixlora.checkpoint import load_adapter


def evaluate_checkpoint(request: Any) -> dict[str, float]:
    """Score ``request.checkpoint_dir`` (or ``request.base``) on ``request.settings.tasks``
    (an ``orchestrator.contract.EvalRequest``); writes ``metrics.json`` into ``request.out_dir``.

    Metrics: ``<task>/acc``, ``<task>/acc_norm`` and their ``_stderr``, ``<task>/n``, and
    ``eval_time_s``; the lm-eval version, the weights (``request.weights``: ``fp32``, ``int8`` or ``int4``,
    ``trainables.lm.quantize``), the device (``request.device``: ``cuda`` runs in bfloat16,
    ``trainables.lm.base.to_device``) and the dtype go into ``metrics.json``. A MixLoRA checkpoint adds
    ``eval_router_entropy`` and ``eval_load_cv`` (means over layers, on the ARC-Easy test examples).
    """
    settings = request.settings
    started = time.time()
    if request.checkpoint_dir is not None:
        model, tokenizer = load_adapter(request.checkpoint_dir, inference=True)
        what = str(request.checkpoint_dir)
    else:
        model, tokenizer = load_base(request.base, device=request.device)  # bfloat16 on cuda
        what = f"the base {request.base}"
    weights = request.weights
    apply_weights(model, weights, request.device)
    to_device(model, request.device)  # a checkpoint's model: built on cpu, merged, then moved
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    request.log(f"lm-eval on {what} ({weights} weights, {dtype} on {request.device}): {', '.join(settings.tasks)}, "
                f"limit {settings.limit}, chat template {'on' if settings.chat_template else 'off'}")
    results = evaluate_lm(model, tokenizer, tasks=settings.tasks, limit=settings.limit,
                          batch_size=settings.batch_size, data_root=request.data_root,
                          chat_template=settings.chat_template, items_dir=request.out_dir)
    metrics = {k: float(v) for k, v in results.items() if isinstance(v, (int, float))}
    metrics.update(_router_pictures(model, tokenizer, request))
    metrics["eval_time_s"] = time.time() - started
    for task in settings.tasks:
        request.log(f"{task}: acc {metrics[f'{task}/acc']:.4f} ± {metrics[f'{task}/acc_stderr']:.4f}, "
                    f"acc_norm {metrics[f'{task}/acc_norm']:.4f} ± {metrics[f'{task}/acc_norm_stderr']:.4f} "
                    f"(n={int(metrics[f'{task}/n'])})")
    (request.out_dir / "metrics.json").write_text(json.dumps(
        {**metrics, "lm_eval_version": results.get("lm_eval_version"), "chat_template": settings.chat_template,
         "weights": weights, "device": request.device, "dtype": dtype},
        indent=2))
    return metrics


def _router_pictures(model: Any, tokenizer: Any, request: Any) -> dict[str, float]:
    """Write the router pictures of a MixLoRA model into ``request.out_dir``; its summary metrics."""
    n = request.settings.routing_examples
    if n == 0:
        return {}
    root = request.data_root
    sources = {"ARC-Easy test": lambda: instructions.arc_examples("test", root),
               "HellaSwag eval": lambda: instructions.hellaswag_examples("eval", root),
               "Code Alpaca": lambda: instructions.code_alpaca_examples(root)}
    measured = {}
    for name, examples in sources.items():
        found = routing.measure_routing(model, tokenizer, examples()[:n])
        if found is None:
            return {}  # plain LoRA or a bare base: no routers
        measured[name] = found
    out = request.out_dir
    what = request.checkpoint_dir.name if request.checkpoint_dir is not None else request.base
    routing.expert_load_png(measured, out / "expert_load.png",
                            f"MixLoRA expert load per layer, {what}: first {n} examples of each source "
                            f"(prompt + gold answer, chat template, padding excluded)")
    (out / "routing.json").write_text(json.dumps({k: v.as_dict() for k, v in measured.items()}))
    if request.history:
        routing.routing_curves_png(request.history, out / "routing_curves.png",
                                   "MixLoRA routing over training (validation batches at each evaluation)")
    arc = measured["ARC-Easy test"]
    request.log(f"routing on ARC-Easy test: entropy / log E {arc.entropy.mean():.3f}, load CV {arc.cv.mean():.3f} "
                f"(means over {arc.load.shape[0]} layers); pictures in expert_load.png")
    return {"eval_router_entropy": float(arc.entropy.mean()), "eval_load_cv": float(arc.cv.mean())}
