"""The one Ray Train worker loop every family trains with.

``train_loop_per_worker({"experiment": Experiment, "recipe": "module:Class"})`` reads top to bottom (the
driver hands over the family's recipe reference, ``Family.recipe``, so the worker needs no registry):

1. set-up: the family's recipe loads its data (and may resolve its copy of the experiment, e.g.
   derive ``train.max_steps`` from a compute budget: the loop reads ``recipe.experiment`` after
   it); ``torch.manual_seed(train.seed)`` (identical init on every rank); the recipe builds the
   model (or rebuilds it from the checkpoint being resumed); AdamW over the recipe's param
   groups; the recipe's LR scheduler (default: LambdaLR, warmup + cosine multipliers); the
   strategy wraps all three (DDP or DeepSpeed);
2. resume: when Ray Train restored a checkpoint, the strategy restores optimizer and
   scheduler state and the step;
3. steps: ``train.grad_accum_steps`` micro-batches of ``train.batch_size`` per optimizer step,
   drawn with a generator seeded by ``seed * 1000 + rank + step`` (a different data order per
   rank, and a resumed run does not replay the batches it saw); ``recipe.step`` holds the optimizer
   steps done, and ``recipe.on_step_end(module, step)`` runs on every rank after each step;
4. every ``train.eval_every`` steps and at the last one: evaluate, then report the metrics with a
   checkpoint (``strategies.py`` describes its layout) to the session: ``ray.train`` in a Train
   worker, or the sweep trial's own process (``session.py``).

Reported metrics: ``step``, the recipe's ``logs`` averaged since the last report (e.g.
``train_loss``), ``lr`` (the first group's), ``<unit>_per_s`` (all workers) and
``<unit>_seen``, the recipe's evaluation metrics, ``train_time_s`` (seconds inside this loop,
set-up included), ``setup_s`` (loop start to the first step), and ``loop_started_at`` /
``worker_started_at`` (unix times, so drivers can split their overhead).

Between reports rank 0 prints a heartbeat line every ``HEARTBEAT_S`` seconds (step, seconds per
step, time left), so a long trial shows progress in the sweep's log.

A recipe that is a ``trainables.training.iterative.IterativeRecipe`` (no model to optimise: one
iteration per step, e.g. value learning over LLM calls) runs ``run_iterations`` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pkgutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import ray.train
import torch
from ray.train import Checkpoint

from trainables.training.iterative import IterativeRecipe, run_iterations
from trainables.training.optim import build_optimizer
from trainables.training.recipe import Recipe, StepOutput, WorkerInfo
from trainables.training.session import current
from trainables.training.strategies import Strategy, make_strategy

HEARTBEAT_S = 60.0  # rank 0 prints progress this often between reports


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point: run the family's recipe in the shared loop (see the module docstring).

    ``config``: ``{"experiment": the resolved experiment, "recipe": "module:Class"}`` (a ``Recipe`` or
    ``IterativeRecipe`` subclass). Also called directly, in a sweep trial's own process, under an
    ``InProcessSession``."""
    _quiet_report_logs()
    experiment = config["experiment"]
    recipe_class = pkgutil.resolve_name(config["recipe"])
    session = current()
    use_gpu = experiment.scaling.use_gpu
    worker = WorkerInfo(rank=session.rank, world_size=session.world_size,
                        device=ray.train.torch.get_device() if use_gpu else torch.device("cpu"))
    recipe = recipe_class(experiment, worker)
    if isinstance(recipe, IterativeRecipe):  # a family that learns without gradient steps
        run_iterations(experiment, recipe)
    else:
        run(experiment, recipe)


class _Heartbeat:
    """A line every ``every_s`` seconds between reports: step, seconds per step and the time left.

    Reports come every ``train.eval_every`` steps, which can be many minutes apart."""

    def __init__(self, name: str, max_steps: int, start_step: int, every_s: float = HEARTBEAT_S) -> None:
        self.name, self.max_steps, self.every_s = name, max_steps, every_s
        self.start_step, self.started = start_step, time.time()
        self.last = self.started

    def tick(self, step: int) -> None:
        now = time.time()
        if now - self.last < self.every_s or step >= self.max_steps:
            return
        self.last = now
        per_step = (now - self.started) / max(step - self.start_step, 1)
        left = (self.max_steps - step) * per_step
        print(f"[{self.name}] step {step}/{self.max_steps}: {per_step:.2f} s/step, about {left / 60:.0f} min left",
              flush=True)


def run(experiment: Any, recipe: Recipe) -> None:
    """The loop itself, on this worker (``ray.train`` context required)."""
    started = time.time()
    exp, train, worker = experiment, experiment.train, recipe.worker
    torch.set_num_threads(max(1, int(exp.scaling.cpus_per_worker)))
    strategy: Strategy = make_strategy(exp.scaling, train, worker.rank, recipe.standalone, worker.world_size)
    session = current()

    # 1. set-up (and 2. resume, while the restored checkpoint's folder exists)
    recipe.setup()
    exp, train = recipe.experiment, recipe.experiment.train  # setup may resolve it (e.g. max_steps from a budget)
    checkpoint = session.get_checkpoint()
    with checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext() as restored:
        resume_dir = Path(restored) if restored is not None else None
        torch.manual_seed(train.seed)
        model = recipe.build_model(resume_dir / "model" if resume_dir is not None else None)
        model.to(worker.device).train()
        optimizer = build_optimizer(recipe.param_groups(model), train.lr, recipe.adam_betas)
        scheduler = recipe.build_scheduler(optimizer)
        model, optimizer, scheduler = strategy.wrap(model, optimizer, scheduler)
        step = strategy.restore(resume_dir, model, optimizer, scheduler) if resume_dir is not None else 0
    resumed_from = step  # reported once, with the first report after a restart (MLflow shows where it resumed)
    if step and worker.rank == 0:
        print(f"[{exp.name}] resumed from step {step}", flush=True)

    # 3. steps
    generator = torch.Generator().manual_seed(train.seed * 1000 + worker.rank + step)
    recipe.step = step
    batches: Iterator[Any] = recipe.batches(generator)
    window = _Window()
    setup_s = time.time() - started
    heartbeat = _Heartbeat(exp.name, train.max_steps, step) if worker.rank == 0 else None
    while step < train.max_steps:
        for micro in range(train.grad_accum_steps):
            out = recipe.forward(model, next(batches))
            strategy.backward(model, out.loss, last=micro == train.grad_accum_steps - 1)
            window.add(out)
        strategy.step(model, optimizer, scheduler, train.grad_clip)
        step += 1
        recipe.step = step
        recipe.on_step_end(strategy.unwrap(model), step)
        if heartbeat is not None:
            heartbeat.tick(step)

        # 4. evaluate, report, checkpoint
        if step % train.eval_every == 0 or step == train.max_steps:
            unit = recipe.throughput_unit
            metrics: dict[str, Any] = {"step": step, "max_steps": train.max_steps,  # as resolved by the recipe
                                       **window.means(), "lr": scheduler.get_last_lr()[0],
                                       f"{unit}_per_s": window.items * worker.world_size / window.elapsed(),
                                       f"{unit}_seen": window.items_per_batch * train.grad_accum_steps
                                       * worker.world_size * step}
            module = strategy.unwrap(model)
            metrics.update(recipe.evaluate(module))
            module.train()
            metrics.update(train_time_s=time.time() - started, setup_s=setup_s, loop_started_at=started,
                           worker_started_at=psutil.Process().create_time())
            if resumed_from:
                metrics["resumed_from_step"], resumed_from = resumed_from, 0
            recipe.on_report(step, metrics)
            metadata = {"step": step, "experiment": exp.name, **recipe.checkpoint_metadata(metrics)}
            if exp.serve is not None:  # serve settings travel with the checkpoint (moe-orch serve <run | dir>)
                metadata["serve"] = dataclasses.asdict(exp.serve)
            with tempfile.TemporaryDirectory() as tmp:
                wrote = strategy.save(Path(tmp), model, optimizer, scheduler, step,
                                      lambda m, d, meta=metadata: recipe.save_model(m, d, meta))
                session.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if wrote else None,
                               checkpoint_dir_name=f"checkpoint_{step:06d}")
            window = _Window()


class _Window:
    """The micro-batches since the last report: summed logs, items and time."""

    def __init__(self) -> None:
        self.started = time.time()
        self.sums: dict[str, float] = {}
        self.batches = self.items = self.items_per_batch = 0

    def add(self, out: StepOutput) -> None:
        self.batches += 1
        self.items += out.num_items
        self.items_per_batch = out.num_items
        for key, value in out.logs.items():
            self.sums[key] = self.sums.get(key, 0.0) + (value.item() if torch.is_tensor(value) else float(value))

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.batches) for k, v in self.sums.items()}

    def elapsed(self) -> float:
        return max(time.time() - self.started, 1e-9)


def _quiet_report_logs() -> None:
    """Ray Train logs every report's whole metrics dict at INFO, from a logger named by its file path
    (so ``RunConfig(logging_config=...)`` does not reach it); with per-layer routing keys that is
    pages per report. It still goes to the session's log files."""
    from ray.train.v2._internal.execution import context as train_context

    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
