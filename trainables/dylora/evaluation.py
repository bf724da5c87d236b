"""How DyLoRA-MoE runs are scored: per-skill held-out scores, code benchmarks, and the family's evaluator.

- ``skill_scores``: per skill, the held-out answer-token ``loss`` (mean NLL), ``ppl`` and ``acc`` (the
  share of answer tokens the model predicts exactly, greedy next token): ``acc`` is the score of the
  accuracy matrix R[i][j];
- ``code_scores``: MBPP / HumanEval pass@k through ``trainables.codeeval`` (sandboxed), the
  problems split across DDP ranks and merged;
- ``detection_summary``: the delay from each true phase boundary to the expert the detector added;
- ``evaluate_checkpoint`` (the family contract's evaluator, ``evaluate.at_end``): reads the rows the
  recipe measured at step 0 and at every phase end from the checkpoint's metadata, computes the
  continual-learning metrics (``cl/*``, ``trainables.dylora.metrics``) and draws
  ``accuracy_matrix.png`` and ``expert_lifecycle.png``; ``continual.json`` holds everything and
  ``cl_items.jsonl`` each held-out example's share of BWT and forgetting (``continual_items``). With
  ``evaluate.rescore`` it also scores the checkpoint's code benchmarks again (e.g. pass@k over n samples),
  with ``request.weights`` (``int8`` / ``int4``: the base's projections as 8- / 4-bit weights,
  ``trainables.lm.quantize``), on
  ``request.device`` (``cuda``: bfloat16, ``trainables.lm.base.to_device``).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import torch
import torch.distributed as dist

from trainables import codeeval
from trainables.dylora.metrics import ContinualMatrix, accuracy_heatmap_png, lifecycle_png
from trainables.lm import instructions
from trainables.training.metrics import perplexity_of


@torch.no_grad()
def skill_scores(model: Any, heldout: dict[str, list], pad_id: int, batch_size: int,
                 device: torch.device) -> dict[str, dict[str, Any]]:
    """``{skill: {"loss", "ppl", "acc", "items"}}`` on each skill's held-out encoded examples (all ranks alike).

    ``loss`` and ``acc`` are over all the skill's answer tokens; ``items`` holds each example's own
    ``{"acc": [...], "loss": [...]}`` in held-out order (what ``cl_items.jsonl`` and its paired intervals use).
    """
    was_training = model.training
    model.eval()
    out: dict[str, dict[str, Any]] = {}
    for skill, rows in heldout.items():
        nll = torch.zeros(len(rows), dtype=torch.float64)  # (N,) per example: summed NLL, right tokens, tokens
        correct = torch.zeros(len(rows), dtype=torch.float64)
        tokens = torch.zeros(len(rows), dtype=torch.float64)
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in instructions.collate(rows[i:i + batch_size], pad_id).items()}
            logits = model(**batch).logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
            target = batch["labels"][:, 1:]  # (B, T-1)
            scored = target != instructions.IGNORE
            token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp_min(0),
                                                          reduction="none")  # (B, T-1)
            nll[i:i + len(target)] = (token_nll * scored).sum(1).double().cpu()
            correct[i:i + len(target)] = ((logits.argmax(-1) == target) & scored).sum(1).double().cpu()
            tokens[i:i + len(target)] = scored.sum(1).double().cpu()
        loss = float(nll.sum() / tokens.sum().clamp_min(1))
        per_example = tokens.clamp_min(1)
        out[skill] = {"loss": loss, "ppl": perplexity_of(loss), "acc": float(correct.sum() / tokens.sum().clamp_min(1)),
                      "items": {"acc": (correct / per_example).tolist(), "loss": (nll / per_example).tolist()}}
    model.train(was_training)
    return out


def code_problems(settings: Any, root: str | None) -> dict[str, list]:
    """``{"mbpp": [...], "humaneval": [...]}`` per the ``evaluate:`` section (empty without one)."""
    if settings is None:
        return {}
    problems = {}
    if settings.mbpp_limit:
        problems["mbpp"] = codeeval.mbpp_problems(root, settings.mbpp_limit)
    if settings.humaneval_limit:
        problems["humaneval"] = codeeval.humaneval_problems(root, settings.humaneval_limit)
    return problems


def code_scores(model: Any, tokenizer: Any, problems: dict[str, list], settings: Any, seed: int, rank: int = 0,
                world_size: int = 1, log: Any = print) -> dict[str, float]:
    """``{"mbpp/pass_at_1", "mbpp/pass_at_<k>"..., "humaneval/...", "<bench>/n_problems"}``: each rank runs its
    share of the problems; the per-problem ``(n, correct)`` counts are gathered so every rank returns the same."""
    out: dict[str, float] = {}
    for bench, items in problems.items():
        started = time.time()
        result = codeeval.evaluate_code(
            model, tokenizer, items, n=settings.n_samples, k_values=tuple(settings.k),
            temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size, seed=seed, timeout_s=settings.timeout_s,
            memory_mb=settings.memory_mb, rank=rank, world_size=world_size, log=log)
        parts: list[Any] = [result.per_problem]
        if dist.is_initialized() and world_size > 1:
            parts = [None] * world_size
            dist.all_gather_object(parts, result.per_problem)
        counts = codeeval.merge_counts(parts)
        for name, value in codeeval.pass_at_k_scores(counts, settings.k).items():
            out[f"{bench}/{name.replace('@', '_at_')}"] = value  # MLflow metric names take no '@'
        out[f"{bench}/n_problems"] = float(len(counts))
        log(f"{bench}: pass@1 {out.get(f'{bench}/pass_at_1', float('nan')):.3f} on {len(counts)} problems "
            f"x {settings.n_samples} samples ({time.time() - started:.0f} s on this rank)")
    return out


def detection_summary(events: list[dict[str, Any]], boundaries: list[int]) -> dict[str, float]:
    """Per true boundary ``b`` (the step its phase starts), the delay in steps to the first detected expert
    at or after it and before the next boundary (``dylora/detection_delay_<i>``; -1 = missed), and the
    number of detected experts matched to no boundary (``dylora/false_novelty``)."""
    added = sorted(e["step"] for e in events if e["kind"] == "expert_added" and e.get("detected"))
    out, matched = {}, set()
    for i, b in enumerate(boundaries):
        end = boundaries[i + 1] if i + 1 < len(boundaries) else math.inf
        hit = next((s for s in added if b <= s < end), None)
        out[f"dylora/detection_delay_{i + 1}"] = float(hit - b) if hit is not None else -1.0
        if hit is not None:
            matched.add(hit)
    out["dylora/false_novelty"] = float(len([s for s in added if s not in matched]))
    return out


def continual_matrix(continual: dict[str, Any], metric: str = "acc") -> ContinualMatrix:
    """R[i][j] from the recipe's rows: row 0 (the base) is the baseline, rows 1..T the phase ends.

    Skill ``j`` is the skill of phase ``j`` (a stream that revisits a skill scores it per phase).
    """
    skills = [skill for skill, _ in continual["phases"]]
    rows = sorted(continual["rows"], key=lambda r: r["phase"])
    score = lambda row, s: row["skills"].get(s, {}).get(metric, math.nan)  # a stream extended on resume
    baseline = [score(rows[0], s) for s in skills]  # has no earlier scores for its new skills: NaN
    scores = [[score(row, s) for s in skills] for row in rows[1:]]
    return ContinualMatrix(scores, baseline, higher_is_better=metric != "loss", skills=skills)


def continual_items(continual: dict[str, Any]) -> list[dict[str, float]]:
    """Per held-out example of every skill but the last phase's: its share of BWT and forgetting.

    Item ``doc_id = 1000 * j + i`` is example ``i`` of phase ``j``'s skill (the same example in every run
    whose held-out split has the same seed, ``data.heldout_seed``). With example-level accuracy ``a``
    (the share of its answer tokens predicted exactly) and ``l*`` the phase ``l <= T-2`` after which skill
    ``j``'s mean is highest:

    - ``bwt = a[T-1] - a[j]`` (GEM); ``forgetting = a[l*] - a[T-1]`` (Chaudhry et al.);
    - ``loss_bwt`` and ``loss_forgetting``: the same on the example's mean answer-token loss, signed so that
      positive means helped (``loss_bwt``) and worse (``loss_forgetting``), as ``eval/loss_*``.

    Each skill holds ``data.heldout`` examples, so the mean over items equals ``cl/bwt`` and
    ``cl/forgetting`` computed on example-level accuracy (the matrix weighs tokens, hence a small gap).
    Empty for a one-phase stream or rows without per-example scores.
    """
    skills = [skill for skill, _ in continual["phases"]]
    rows = sorted(continual["rows"], key=lambda r: r["phase"])[1:]  # rows[i]: after phase i
    T = len(skills)
    if T < 2 or any("items" not in row["skills"].get(s, {}) for row in rows for s in skills):
        return []
    out = []
    for j, skill in enumerate(skills[:T - 1]):
        acc = [torch.tensor(rows[l]["skills"][skill]["items"]["acc"]) for l in range(T)]  # (N,) per phase
        loss = [-torch.tensor(rows[l]["skills"][skill]["items"]["loss"]) for l in range(T)]  # oriented: higher = better
        best_acc = max(range(T - 1), key=lambda l: float(acc[l].mean()))
        best_loss = max(range(T - 1), key=lambda l: float(loss[l].mean()))
        for i in range(len(acc[0])):
            out.append({"doc_id": 1000 * j + i, "bwt": float(acc[T - 1][i] - acc[j][i]),
                        "forgetting": float(acc[best_acc][i] - acc[T - 1][i]),
                        "loss_bwt": float(loss[T - 1][i] - loss[j][i]),
                        "loss_forgetting": float(loss[best_loss][i] - loss[T - 1][i]),
                        "acc_final": float(acc[T - 1][i])})
    return out


def evaluate_checkpoint(request: Any) -> dict[str, float]:
    """The family contract's evaluator on a pool checkpoint: continual-learning metrics and pictures from the
    scores the run measured at each phase end (nothing is re-scored); ``continual.json`` in ``out_dir``."""
    from trainables.training.manifest import read_manifest

    started = time.time()
    if request.checkpoint_dir is None:
        raise ValueError("dylora evaluates its own checkpoints (their phase scores); the base's scores are row 0 "
                         "of every run")
    manifest = read_manifest(request.checkpoint_dir)
    continual = manifest.metadata.get("continual")
    if not continual or len(continual.get("rows", [])) < len(continual.get("phases", [])) + 1:
        raise ValueError(f"{request.checkpoint_dir}: the stream is not finished (phase rows missing)")
    skills = [skill for skill, _ in continual["phases"]]
    method = continual.get("method", "dylora")
    acc, loss = continual_matrix(continual, "acc"), continual_matrix(continual, "loss")
    metrics = dict(acc.summary())
    metrics.update({f"eval/loss_{k.removeprefix('cl/')}": v for k, v in loss.summary().items()})
    metrics.update(detection_summary(continual["events"], continual["boundaries"]))
    out = request.out_dir
    accuracy_heatmap_png({method: acc}, skills, out / "accuracy_matrix.png",
                         f"{method}: held-out answer-token accuracy R[i][j], after phase i on skill j")
    lifecycle_png(continual["events"], continual["curves"], out / "expert_lifecycle.png",
                  f"{method}: expert lifecycle over the stream ({' -> '.join(skills)})")
    (out / "continual.json").write_text(json.dumps({"matrix_acc": acc.to_dict(), "matrix_loss": loss.to_dict(),
                                                    "metrics": metrics, **continual}, indent=1))
    items = continual_items(continual)
    if items:  # moe-orch compare --task cl --metric bwt|forgetting pairs these across runs
        (out / "cl_items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    for row in sorted(continual["rows"], key=lambda r: r["phase"]):
        scores = ", ".join(f"{s} acc {row['skills'][s]['acc']:.3f} loss {row['skills'][s]['loss']:.3f}"
                           for s in skills if s in row["skills"])
        code = ", ".join(f"{k} {v:.3f}" for k, v in row["code"].items() if "pass_at_" in k)
        request.log(f"after phase {row['phase']} (step {row['step']}, {row['num_experts']} experts): {scores}"
                    + (f"; {code}" if code else ""))
    if request.settings.rescore:
        metrics.update(_rescore(request))
    request.log(", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    metrics["eval_time_s"] = time.time() - started
    return metrics


def _rescore(request: Any) -> dict[str, float]:
    """The checkpoint's code benchmarks scored again with the ``evaluate:`` settings (``eval/`` prefix)."""
    from trainables.dylora.checkpoint import load_pool
    from trainables.lm.base import to_device
    from trainables.lm.quantize import apply_weights

    model, tokenizer, manifest = load_pool(request.checkpoint_dir)
    # int8 / int4: the base's projections; the experts and router stay float
    apply_weights(model, request.weights, request.device)
    to_device(model, request.device)
    settings = request.settings
    problems = code_problems(settings, request.data_root)
    scores = code_scores(model, tokenizer, problems, settings, seed=int(manifest.metadata.get("seed", 0)),
                         log=request.log)
    return {f"eval/{k}": v for k, v in scores.items()}
