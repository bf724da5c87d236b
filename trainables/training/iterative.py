"""``IterativeRecipe``: a family whose training is a sequence of iterations, not gradient steps.

Some families learn without an optimizer: the LLM-judge MoE learns a value per expert from
rewards, one question per iteration, over LLM calls. They plug into the same Ray Train worker,
reports, checkpoints, resume and MLflow as every other family; only the step differs. The
worker loop (``trainables.training.loop``) runs ``run_iterations`` for a recipe of this kind::

    recipe = MyIterativeRecipe(experiment, worker)
    recipe.setup(resume_dir)               # data, clients; state restored from the checkpoint's model/
    while iteration < train.max_steps and not recipe.finished():
        metrics = recipe.iterate(iteration)   # one iteration; its metrics are reported at once
        iteration += 1                        # every train.eval_every iterations and at the end:
    recipe.save_model(directory, metadata)    # the checkpoint (manifest + the family's state files)
    recipe.close()

Every iteration is reported (``step`` = iterations done); a checkpoint goes with every
``train.eval_every``-th report and with the last. A family using it runs on one worker.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from trainables.training.recipe import WorkerInfo


class IterativeRecipe:
    """Base class of a recipe whose step is an iteration of its own (see the module docstring)."""

    throughput_unit = "iterations"

    def __init__(self, experiment: Any, worker: WorkerInfo) -> None:
        self.experiment = experiment
        self.worker = worker

    def setup(self, resume_dir: Path | None) -> None:
        """Load data and open clients; restore the state saved in ``resume_dir`` (a checkpoint's ``model/``)."""

    def iterate(self, iteration: int) -> dict[str, float]:
        """*Required.* Run iteration ``iteration`` (0-based); its scalar metrics."""
        raise NotImplementedError

    def finished(self) -> bool:
        """True to stop before ``train.max_steps`` (a termination condition)."""
        return False

    def save_model(self, directory: Path, metadata: dict[str, Any]) -> None:
        """*Required.* Write the checkpoint (a ``config.json`` manifest and the state) into ``directory``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release clients and actors."""


def run_iterations(experiment: Any, recipe: IterativeRecipe) -> None:
    """The worker loop for an ``IterativeRecipe`` (reports to ``trainables.training.session.current()``)."""
    from ray.train import Checkpoint

    from trainables.training.session import current

    session = current()
    started = time.time()
    train = experiment.train
    checkpoint = session.get_checkpoint()
    iteration = 0
    if checkpoint is not None:
        with checkpoint.as_directory() as restored:
            model_dir = Path(restored) / "model"
            recipe.setup(model_dir)
            iteration = int(_read_step(model_dir))
        print(f"[{experiment.name}] resumed after iteration {iteration}", flush=True)
    else:
        recipe.setup(None)
    setup_s = time.time() - started
    try:
        while iteration < train.max_steps and not recipe.finished():
            metrics: dict[str, Any] = dict(recipe.iterate(iteration))
            iteration += 1
            last = iteration >= train.max_steps or recipe.finished()
            metrics.update(step=iteration, train_time_s=time.time() - started, setup_s=setup_s,
                           loop_started_at=started, worker_started_at=psutil.Process().create_time())
            if not (last or iteration % train.eval_every == 0):
                session.report(metrics)
                continue
            metadata = {"step": iteration, "experiment": experiment.name, "finished": recipe.finished()}
            if experiment.serve is not None:
                metadata["serve"] = dataclasses.asdict(experiment.serve)
            with tempfile.TemporaryDirectory() as tmp:
                recipe.save_model(Path(tmp) / "model", metadata)
                session.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                               checkpoint_dir_name=f"checkpoint_{iteration:06d}")
    finally:
        recipe.close()


def _read_step(model_dir: Path) -> int:
    from trainables.training.manifest import read_manifest

    return int(read_manifest(model_dir).metadata.get("step", 0))
