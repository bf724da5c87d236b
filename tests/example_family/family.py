"""``toy``: linear regression on synthetic data, a complete moe-orch family in one file.

It plugs into validate, train (the shared loop, DDP), sweep, checkpoints and evaluate through
its ``FAMILY`` declaration alone; nothing in ``orchestrator/`` or ``serve/`` names it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from orchestrator.contract import DataSection, EvalRequest, EvaluateSection, Family
from orchestrator.schema import Section, setting
from trainables.training import Manifest, Recipe, StepOutput, read_manifest, write_manifest


@dataclass
class ToyConfig(Section):
    dim: int = setting(8, ge=1, doc="input features")


@dataclass
class ToyData(DataSection):
    noise: float = 0.01


@dataclass
class ToyEvaluate(EvaluateSection):
    examples: int = 256


def batch(cfg: ToyConfig, n: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x (n, dim) and y = x @ [1, 2, ..., dim] + noise (n,)."""
    x = torch.randn(n, cfg.dim, generator=generator)
    return x, x @ torch.arange(1.0, cfg.dim + 1) + noise * torch.randn(n, generator=generator)


class ToyRecipe(Recipe):
    throughput_unit = "examples"

    def build_model(self, resume_dir: Path | None) -> nn.Module:
        return load(resume_dir, read_manifest(resume_dir)) if resume_dir else nn.Linear(self.experiment.model.dim, 1)

    def batches(self, generator: torch.Generator) -> Iterator[Any]:
        while True:
            yield batch(self.experiment.model, self.experiment.train.batch_size, self.experiment.data.noise, generator)

    def forward(self, model: nn.Module, data: Any) -> StepOutput:
        loss = nn.functional.mse_loss(model(data[0]).squeeze(-1), data[1])
        return StepOutput(loss, {"train_loss": loss}, num_items=len(data[1]))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        x, y = batch(self.experiment.model, 256, 0.0, torch.Generator().manual_seed(1))
        return {"val_loss": nn.functional.mse_loss(model(x).squeeze(-1), y).item()}

    def save_model(self, model: nn.Module, directory: Path, metadata: dict[str, Any]) -> None:
        write_manifest(directory, Manifest("toy", 1, {"dim": model.in_features}, metadata))
        save_model(model, str(directory / "model.safetensors"))


def load(directory: Path, manifest: Manifest) -> nn.Module:
    model = nn.Linear(manifest.config["dim"], 1)
    load_model(model, str(directory / "model.safetensors"))
    return model.eval()


@torch.no_grad()
def evaluate(request: EvalRequest) -> dict[str, float]:
    manifest = read_manifest(request.checkpoint_dir)
    x, y = batch(ToyConfig(**manifest.config), request.settings.examples, 0.0, torch.Generator().manual_seed(2))
    metrics = {"test_mse": nn.functional.mse_loss(load(request.checkpoint_dir, manifest)(x).squeeze(-1), y).item()}
    (request.out_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


FAMILY = Family(name="toy", model=ToyConfig, data=ToyData, recipe="example_family.family:ToyRecipe",
                checkpoint="example_family.family:load", metrics=("step", "train_loss", "val_loss", "lr"),
                evaluate=ToyEvaluate, evaluator="example_family.family:evaluate", eval_metrics=("test_mse",))
