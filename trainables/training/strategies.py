"""The distributed strategies behind one small interface: DDP (gloo on CPU, NCCL on GPU) and
DeepSpeed ZeRO 0-3. The training loop calls only these methods:

- ``wrap(model, optimizer, scheduler)``: returns the three, wrapped;
- ``step(model, loss, optimizer, scheduler, grad_clip)``: backward, clipping, optimizer and
  scheduler step;
- ``unwrap(model)``: the family's module inside the wrapper;
- ``save(directory, model, optimizer, scheduler, step, write_model)``: this rank's part of a
  checkpoint (collective under DeepSpeed); returns whether this rank wrote anything;
- ``restore(directory, model, optimizer, scheduler)``: the step to continue from.

Checkpoint layout (one directory per report)::

    model/           the family's model checkpoint (rank 0; under ZeRO-3 from gathered parameters)
    train_state.pt   DDP: {"step", "optimizer", "scheduler"} (tensors and plain data; loaded weights_only)
    deepspeed/       DeepSpeed: engine.save_checkpoint (every rank writes its shards)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

WriteModel = Callable[[nn.Module, Path], None]  # (module to save, model/ directory) -> None
DS_TAG = "state"
TRAIN_STATE = "train_state.pt"


class DDPStrategy:
    """PyTorch DDP through ``ray.train.torch.prepare_model``."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def wrap(self, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[nn.Module, Any, Any]:
        import ray.train.torch

        wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
        return wrapped, optimizer, scheduler

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def step(self, model: nn.Module, loss: torch.Tensor, optimizer: Any, scheduler: Any,
             grad_clip: float | None) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        optimizer.step()
        scheduler.step()

    def save(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any, step: int,
             write_model: WriteModel) -> bool:
        if self.rank != 0:
            return False
        write_model(self.unwrap(model), directory / "model")
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   directory / TRAIN_STATE)
        return True

    def restore(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> int:
        """Optimizer and scheduler state (the weights were rebuilt by the recipe from ``model/``)."""
        state = torch.load(directory / TRAIN_STATE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])


class DeepSpeedStrategy:
    """DeepSpeed ZeRO stage 0-3, fp32 (CPU-friendly); the engine clips, steps and schedules."""

    def __init__(self, rank: int, zero_stage: int, micro_batch: int, grad_clip: float | None,
                 standalone: Callable[[nn.Module], nn.Module]) -> None:
        self.rank, self.zero_stage, self.standalone = rank, zero_stage, standalone
        self.config = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": grad_clip if grad_clip is not None else 0.0,
            "zero_optimization": {"stage": zero_stage},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def wrap(self, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[nn.Module, Any, Any]:
        import deepspeed

        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.config)
        return engine, optimizer, scheduler

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def step(self, model: Any, loss: torch.Tensor, optimizer: Any, scheduler: Any, grad_clip: float | None) -> None:
        model.backward(loss)
        model.step()  # clips (gradient_clipping), steps the optimizer and the LR scheduler

    def save(self, directory: Path, model: Any, optimizer: Any, scheduler: Any, step: int,
             write_model: WriteModel) -> bool:
        model.save_checkpoint(str(directory / "deepspeed"), tag=DS_TAG, client_state={"step": step})
        module = self.unwrap(model)
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if self.rank == 0:
                    write_model(self.standalone(module), directory / "model")
        elif self.rank == 0:
            write_model(self.standalone(module), directory / "model")
        return True

    def restore(self, directory: Path, model: Any, optimizer: Any, scheduler: Any) -> int:
        _, client_state = model.load_checkpoint(str(directory / "deepspeed"), tag=DS_TAG)
        return int(client_state["step"])


def make_strategy(scaling: Any, train: Any, rank: int, standalone: Callable[[nn.Module], nn.Module]
                  ) -> DDPStrategy | DeepSpeedStrategy:
    """The strategy named by ``scaling.strategy`` (validation already checked the family supports it)."""
    if scaling.strategy == "deepspeed":
        return DeepSpeedStrategy(rank, scaling.zero_stage, train.batch_size, train.grad_clip, standalone)
    return DDPStrategy(rank)
