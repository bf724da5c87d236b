"""The toy family with a recipe that fails once, mid-run: for tests of restarts from a checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from example_family.family import FAMILY as TOY
from example_family.family import ToyRecipe

FAIL_AT_STEP = 25
FAILED: dict[str, bool] = {"once": False}  # per process: a trial run again in it does not fail again


class FlakyRecipe(ToyRecipe):
    def on_step_end(self, model: nn.Module, step: int) -> None:
        if step == FAIL_AT_STEP and not FAILED["once"]:
            FAILED["once"] = True
            raise RuntimeError(f"injected failure at step {step}")


FAMILY: Any = dataclasses.replace(TOY, name="flaky_toy", recipe="example_family.flaky:FlakyRecipe")
