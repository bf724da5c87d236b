"""The one training loop every family shares (``loop.py``), the ``Recipe`` a family supplies to it,
the distributed strategies (DDP, DeepSpeed ZeRO 0-3), the optimizer and LR schedule, and the
checkpoint manifest every family writes.

``recipe``, ``optim`` and ``manifest`` import torch only; ``loop`` and ``strategies`` are the
Ray Train side.
"""

from trainables.training.iterative import IterativeRecipe
from trainables.training.manifest import FORMAT_FILE, Manifest, read_manifest, write_manifest
from trainables.training.optim import build_optimizer, decay_groups, lr_multiplier
from trainables.training.recipe import Recipe, StepOutput, WorkerInfo

__all__ = [
    "FORMAT_FILE",
    "IterativeRecipe",
    "Manifest",
    "Recipe",
    "StepOutput",
    "WorkerInfo",
    "build_optimizer",
    "decay_groups",
    "lr_multiplier",
    "read_manifest",
    "write_manifest",
]
