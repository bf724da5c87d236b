"""``Recipe``: a family's part of the one training loop (``trainables.training.loop``).

The loop owns everything families share: seeding, the optimizer and LR schedule, the
strategy (DDP or DeepSpeed), resume, the step (backward, clipping, optimizer, scheduler),
throughput, reports and checkpoints. A recipe supplies what differs: data, the model, one
batch's loss, evaluation and the model checkpoint. Recipes import torch (and the family's
model code) only: no Ray, no MLflow.

Lifecycle, on every worker::

    recipe = MyRecipe(experiment, worker)
    recipe.setup()                               # data
    model = recipe.build_model(resume_dir)       # after torch.manual_seed(train.seed)
    groups = recipe.param_groups(model)          # AdamW groups (default: decay / no-decay)
    scheduler = recipe.build_scheduler(optim)    # default: warmup + cosine (or linear) multipliers
    for batch in recipe.batches(generator):      # endless; generator seeded per rank and step
        out = recipe.forward(model, batch)       # StepOutput: loss to minimise + scalars to average
        recipe.on_step_end(module, step)         # after each optimizer step (recipe.step = steps done)
    recipe.evaluate(module)                      # every train.eval_every steps and at the end
    recipe.save_model(module, directory, meta)   # the model checkpoint (config.json manifest + weights)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.training.optim import decay_groups, lr_multiplier


@dataclass(frozen=True)
class WorkerInfo:
    """Where this copy of the loop runs."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")


@dataclass
class StepOutput:
    """One batch's result: ``loss`` is what the step minimises (coefficients applied), ``logs`` the
    scalars averaged over the steps between two reports, ``num_items`` the tokens or examples
    this worker processed (for throughput)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)
    num_items: int = 0


class Recipe:
    """Base class of a family's recipe; override the methods marked *required*.

    ``experiment`` is the typed ``orchestrator.experiment.Experiment`` (``experiment.model`` is the
    family's config dataclass, ``experiment.data`` its data section with an absolute ``root``).
    """

    throughput_unit = "tokens"  # reports ``<unit>_per_s`` and ``<unit>_seen``
    adam_betas: tuple[float, float] = (0.9, 0.95)

    def __init__(self, experiment: Any, worker: WorkerInfo) -> None:
        self.experiment = experiment
        self.worker = worker
        self.step = 0  # optimizer steps done (the loop keeps it current)

    def setup(self) -> None:
        """Load data (before the model is built)."""

    def build_model(self, resume_dir: Path | None) -> nn.Module:
        """*Required.* The model, freshly initialised, or rebuilt from the ``model/`` folder of the
        checkpoint being resumed (``resume_dir``; its optimizer state is restored by the loop)."""
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        """AdamW param groups; default: one part at ``train.lr``, decay on matrices only."""
        train = self.experiment.train
        return decay_groups([("model", model, train.lr)], train.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """The LR scheduler; default: LambdaLR over ``lr_multiplier`` (linear warmup, then
        ``train.lr_schedule``: cosine, or linear decay to 0)."""
        train = self.experiment.train
        schedule = lambda s: lr_multiplier(s, train.warmup_steps, train.max_steps, train.min_lr_ratio,
                                           train.lr_schedule)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    def batches(self, generator: torch.Generator) -> Iterator[Any]:
        """*Required.* Endless training batches drawn with ``generator``."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Any) -> StepOutput:
        """*Required.* The loss of one batch (``model`` may be wrapped by DDP or DeepSpeed)."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """*Required.* Validation metrics (``model`` unwrapped; the loop restores train mode)."""
        raise NotImplementedError

    def save_model(self, model: nn.Module, directory: Path, metadata: dict[str, Any]) -> None:
        """*Required.* Write the self-describing model checkpoint (manifest + safetensors) into ``directory``."""
        raise NotImplementedError

    def standalone(self, model: nn.Module) -> nn.Module:
        """A plain CPU copy of ``model`` that ``save_model`` can write (ZeRO keeps parameters as views
        of flat buffers, which safetensors refuses). Needed by families that support DeepSpeed."""
        raise NotImplementedError(f"{type(self).__name__} does not support DeepSpeed")

    def checkpoint_metadata(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Extra metadata for the model checkpoint (the loop adds step, experiment, serve settings)."""
        return {}

    def on_step_end(self, model: nn.Module, step: int) -> None:
        """Called on every rank after each optimizer step (``model`` unwrapped; ``step`` steps done)."""

    def on_report(self, step: int, metrics: dict[str, float]) -> None:
        """Called on every rank after each evaluation (e.g. to print a summary line on rank 0)."""
