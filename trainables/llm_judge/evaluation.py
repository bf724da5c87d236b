"""An honest evaluation of the LLM-judge MoE: does the judges' choice beat simply asking one expert?

For each task (ARC-Easy: the letter extracted from the text; MBPP: the code run against its
asserts in the sandbox), every expert of the checkpoint answers every question, the judges select
one answer, and every answer is graded. Per task, the accuracy of:

- ``selected``: the judge-selected answer (a question the judges could not decide counts as wrong);
- ``random_expert``: a uniformly random expert's answer (the mean over experts, in expectation);
- ``best_expert``: the single expert that scored best on these same questions (chosen after the
  fact, so an optimistic baseline);
- ``top_value_expert``: the expert that training valued most, alone (what the values learned);
- ``oracle``: any expert right.

Whether the judges beat chance is a paired question (the same questions): ``selected_minus_random``
is the mean over questions of (selected right) - (the share of experts right), with a 95 % paired
bootstrap interval (``_ci_low`` / ``_ci_high``, 2000 resamples over questions,
``trainables.significance``); the same for the highest-valued expert (``top_value_minus_random``).
Whether the *values* learned to pick better experts as training went on: the checkpoint keeps the
values after every iteration, and ``<task>_value_curve.csv`` / ``.png`` give, per iteration, the
test accuracy of the expert that was highest-valued then, against a random expert's.
And the cost per question: tokens (prompt + completion, every call), calls and seconds. Files
(under the run's ``evaluation/``): ``<task>_table.md``, ``<task>_questions.csv`` (one row per
question: each expert's verdict, the selected expert), ``<task>_candidates.csv`` (every answer
with its judges' scores), ``<task>_value_curve.csv`` / ``.png``, ``metrics.json``.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from trainables.llm_judge.backends import Caller, make_backend
from trainables.llm_judge.checkpoint import JudgeCheckpoint, load
from trainables.llm_judge.experts import seed_for
from trainables.llm_judge.pipeline import Round, csv_text, run_round
from trainables.llm_judge.tasks import load_questions
from trainables.llm_judge.values import ValueLearner
from trainables.significance import paired_bootstrap_ci
from trainables.training.manifest import read_manifest

ROWS = (("selected", "judge-selected answer"), ("random_expert", "random expert (expected)"),
        ("best_expert", "best single expert (post hoc)"), ("top_value_expert", "highest-valued expert"),
        ("oracle", "oracle (any expert right)"))


def evaluate_checkpoint(request: Any) -> dict[str, float]:
    """The family's evaluator (``EvalRequest`` -> metrics ``<task>/<row>_acc`` and costs)."""
    checkpoint = load(request.checkpoint_dir, read_manifest(request.checkpoint_dir))
    if request.settings.max_tokens is not None:  # the same experts, with another answer budget
        checkpoint.team.experts = [dataclasses.replace(e, max_tokens=request.settings.max_tokens)
                                   for e in checkpoint.team.experts]
    started = time.time()
    metrics: dict[str, float] = {}
    loop = asyncio.new_event_loop()
    cfg = checkpoint.config
    caller = Caller(make_backend(cfg), cfg.max_concurrency, cfg.timeout_s, cfg.retries, cfg.backoff_s)
    try:
        for task in request.settings.tasks:
            questions = load_questions(task, request.settings.split, request.settings.limit, request.data_root,
                                       seed=0)
            request.log(f"evaluate: {task}, {len(questions)} questions, {len(checkpoint.team.experts)} experts each")
            task_started = time.time()
            rounds = loop.run_until_complete(_answer_all(caller, checkpoint, questions, request))
            metrics.update(_score(task, rounds, checkpoint, caller.reset(), time.time() - task_started,
                                  request.out_dir))
            request.log(f"evaluate: {task} " + ", ".join(f"{row} {metrics[f'{task}/{row}_acc']:.3f}"
                                                         for row, _ in ROWS))
    finally:
        loop.run_until_complete(caller.backend.aclose())
        loop.close()
    metrics["eval_time_s"] = time.time() - started
    (request.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


async def _answer_all(caller: Caller, checkpoint: JudgeCheckpoint, questions: list[Any], request: Any) -> list[Round]:
    """Every question through every expert, ``concurrent_questions`` at a time, in order."""
    everyone = list(range(len(checkpoint.team.experts)))
    slots = asyncio.Semaphore(request.settings.concurrent_questions)
    done = 0

    async def one(i: int, question: Any) -> Round:
        nonlocal done
        async with slots:
            result = await run_round(caller, checkpoint.team, checkpoint.config, question, everyone,
                                     seed_for("eval", i), grade_all=True, log=lambda line: None)
        done += 1
        if done % max(1, len(questions) // 20) == 0 or done == len(questions):  # about 20 lines a task
            request.log(f"evaluate: {done}/{len(questions)} questions")
        return result

    return list(await asyncio.gather(*(one(i, q) for i, q in enumerate(questions))))


def _score(task: str, rounds: list[Round], checkpoint: JudgeCheckpoint, counts: dict[str, float], wall_s: float,
           out_dir: Path) -> dict[str, float]:
    n, experts = len(rounds), len(checkpoint.team.experts)
    right = [[bool(r.correct.get(e)) for e in range(experts)] for r in rounds]  # (questions, experts)
    per_expert = [sum(row[e] for row in right) / n for e in range(experts)]
    top_value = ValueLearner(checkpoint.config, checkpoint.state).best_expert()
    acc = {
        "selected": sum(bool(r.selected is not None and r.correct.get(r.selected)) for r in rounds) / n,
        "random_expert": sum(per_expert) / experts,
        "best_expert": max(per_expert),
        "top_value_expert": per_expert[top_value],
        "oracle": sum(any(row) for row in right) / n,
    }
    selected = torch.tensor([float(r.selected is not None and bool(r.correct.get(r.selected))) for r in rounds])
    random_expert = torch.tensor([sum(row) / experts for row in right])  # (questions,) expected correctness
    top_valued = torch.tensor([float(row[top_value]) for row in right])
    paired = {}
    for name, chosen in (("selected_minus_random", selected), ("top_value_minus_random", top_valued)):
        low, high = paired_bootstrap_ci(chosen, random_expert)
        paired.update({name: float((chosen - random_expert).mean()), f"{name}_ci_low": low,
                       f"{name}_ci_high": high})
    cost = {"tokens_per_question": (counts["prompt_tokens"] + counts["completion_tokens"]) / n,
            "calls_per_question": counts["calls"] / n, "seconds_per_question": wall_s / n,  # wall clock
            "latency_per_question_s": sum(r.seconds for r in rounds) / n,  # one question, start to end
            "undecided": sum(r.selection is None for r in rounds) / n,
            "judge_failures_per_question": sum(len(r.selection.failures) for r in rounds if r.selection) / n}
    _write(task, rounds, checkpoint, acc, per_expert, top_value, cost, paired, out_dir)
    _value_curve(task, checkpoint.state.value_history, per_expert, out_dir)
    return {**{f"{task}/{k}_acc": v for k, v in acc.items()}, **{f"{task}/{k}": v for k, v in cost.items()},
            **{f"{task}/{k}": v for k, v in paired.items()},
            **{f"{task}/expert_{e}_acc": v for e, v in enumerate(per_expert)}, f"{task}/questions": float(n)}


def _value_curve(task: str, history: list[list[float]], per_expert: list[float], out_dir: Path) -> None:
    """Per training iteration: the then highest-valued expert and its accuracy here, against a random
    expert's (``<task>_value_curve.csv`` and ``.png``). Nothing for a checkpoint without the history."""
    if not history:
        return
    random_acc = sum(per_expert) / len(per_expert)
    rows = []
    for iteration, values in enumerate(history, start=1):
        best = max(range(len(values)), key=lambda e: (values[e], -e))
        rows.append((iteration, best, per_expert[best], random_acc))
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f"{task}_value_curve.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iteration", "top_value_expert", "top_value_expert_acc", "random_expert_acc"])
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.step([r[0] for r in rows], [r[2] for r in rows], where="post", label="highest-valued expert")
    ax.axhline(random_acc, color="gray", linestyle="--", label="random expert")
    ax.axhline(max(per_expert), color="gray", linestyle=":", label="best / worst single expert")
    ax.axhline(min(per_expert), color="gray", linestyle=":")
    ax.set(xlabel="training iteration", ylabel=f"{task} accuracy (these questions)",
           title="Do the learned values pick better experts?", ylim=(0, min(1.0, max(per_expert) + 0.1)))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / f"{task}_value_curve.png", dpi=120)
    plt.close(fig)


def _write(task: str, rounds: list[Round], checkpoint: JudgeCheckpoint, acc: dict[str, float],
           per_expert: list[float], top_value: int, cost: dict[str, float], paired: dict[str, float],
           out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    values = checkpoint.state.values
    lines = [f"# {task}: {len(rounds)} questions, {len(per_expert)} experts, {checkpoint.config.n_judge} judges",
             "", "| answer | accuracy |", "|---|---|"]
    lines += [f"| {label} | {acc[row]:.3f} |" for row, label in ROWS]
    lines += ["", "Paired over these questions, against a random expert (95 % bootstrap interval):", ""]
    lines += [f"- {name.replace('_', ' ')}: {paired[name]:+.3f} [{paired[name + '_ci_low']:+.3f}, "
              f"{paired[name + '_ci_high']:+.3f}]" for name in ("selected_minus_random", "top_value_minus_random")]
    lines += ["", "| expert | model | T | top_p | value | accuracy |", "|---|---|---|---|---|---|"]
    for e, config in enumerate(checkpoint.team.experts):
        mark = " (highest value)" if e == top_value else ""
        lines.append(f"| E{e}{mark} | {config.model} | {config.temperature:.2f} | {config.top_p:.2f} | "
                     f"{values[e]:.3f} | {per_expert[e]:.3f} |")
    lines += ["", f"Cost per question: {cost['tokens_per_question']:.0f} tokens, {cost['calls_per_question']:.1f} "
              f"calls, {cost['seconds_per_question']:.1f} s of wall clock ({cost['latency_per_question_s']:.1f} s "
              f"from its first call to its last); undecided (no judge score): {cost['undecided']:.1%}."]
    (out_dir / f"{task}_table.md").write_text("\n".join(lines) + "\n")
    with (out_dir / f"{task}_questions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question_id", "selected", *[f"E{e}" for e in range(len(per_expert))]])
        for r in rounds:
            writer.writerow([r.question.id, "" if r.selected is None else r.selected,
                             *[int(bool(r.correct.get(e))) for e in range(len(per_expert))]])
    text = csv_text([], header=True) + "".join(csv_text(r.csv_rows(i, checkpoint.team), header=False)
                                               for i, r in enumerate(rounds))
    (out_dir / f"{task}_candidates.csv").write_text(text, encoding="utf-8")
