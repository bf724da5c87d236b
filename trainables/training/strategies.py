"""The distributed strategies behind one small interface, the ``Strategy`` protocol: DDP (gloo on CPU,
NCCL on GPU) and DeepSpeed ZeRO 0-3. The training loop calls only its methods:

- ``wrap``, then per micro-batch ``backward`` (``train.grad_accum_steps`` of them per step; ``last``
  on the final one, where DDP all-reduces the gradients), then ``step`` (a no-op under DeepSpeed,
  whose engine steps at the accumulation boundary inside ``backward``);
- ``unwrap`` for the family's module; ``save`` (collective under DeepSpeed) and ``restore``.

Checkpoint layout (one directory per report)::

    model/           the family's model checkpoint (rank 0; under ZeRO-3 from gathered parameters)
    train_state.pt   DDP: {"step", "optimizer", "scheduler"} (tensors and plain data; loaded weights_only)
    deepspeed/       DeepSpeed: engine.save_checkpoint (every rank writes its shards)
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from trainables.training.manifest import UnsafeCheckpointError

WriteModel = Callable[[nn.Module, Path], None]  # (module to save, model/ directory) -> None
DS_TAG = "state"
TRAIN_STATE = "train_state.pt"


class Strategy(Protocol):
    """How the loop wraps, steps, saves and restores a model, whatever distributes it (module docstring).

    ``model``, ``optimizer`` and ``scheduler`` passed to the methods after ``wrap`` are the wrapped ones.
    """

    def wrap(self, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[nn.Module, Any, Any]:
        """The model, optimizer and LR scheduler, wrapped for training."""
        ...

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The family's module inside the wrapper."""
        ...

    def backward(self, model: nn.Module, loss: torch.Tensor, last: bool) -> None:
        """One micro-batch's backward; ``last``: the final micro-batch of the optimizer step."""
        ...

    def step(self, model: nn.Module, optimizer: Any, scheduler: Any, grad_clip: float | None) -> None:
        """The optimizer step: gradient clipping (max norm ``grad_clip``), optimizer, LR scheduler."""
        ...

    def save(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any, step: int,
             write_model: WriteModel) -> bool:
        """This rank's part of a checkpoint in ``directory`` (``write_model`` writes ``model/``); whether
        it wrote anything."""
        ...

    def restore(self, directory: Path, model: nn.Module, optimizer: Any, scheduler: Any) -> int:
        """The training state saved in ``directory`` restored; the step to continue from."""
        ...


def _unwrap(model: nn.Module) -> nn.Module:
    """The module a DDP or DeepSpeed wrapper holds (``.module``), else ``model`` itself."""
    return model.module if hasattr(model, "module") else model


class DDPStrategy:
    """PyTorch DDP through ``ray.train.torch.prepare_model``."""

    def __init__(self, rank: int, grad_accum_steps: int = 1, world_size: int | None = None) -> None:
        self.rank, self.grad_accum_steps, self.world_size = rank, grad_accum_steps, world_size

    def wrap(self, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[nn.Module, Any, Any]:
        if self.world_size == 1:  # nothing to synchronise (and maybe no Train worker: a sweep trial's process)
            return model, optimizer, scheduler
        import ray.train.torch

        wrapped = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
        return wrapped, optimizer, scheduler

    unwrap = staticmethod(_unwrap)

    def backward(self, model: nn.Module, loss: torch.Tensor, last: bool) -> None:
        """Gradients of the mean loss over the step's micro-batches; DDP syncs on the last only."""
        if self.grad_accum_steps > 1:
            loss = loss / self.grad_accum_steps
        if last or not hasattr(model, "no_sync"):
            loss.backward()
        else:
            with model.no_sync():
                loss.backward()

    def step(self, model: nn.Module, optimizer: Any, scheduler: Any, grad_clip: float | None) -> None:
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

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
        try:
            state = torch.load(directory / TRAIN_STATE, weights_only=True)
        except pickle.UnpicklingError as exc:  # weights_only refuses anything but tensors and plain data
            raise UnsafeCheckpointError(f"{directory / TRAIN_STATE}: does not load weights-only (it holds pickled "
                                        f"objects beyond tensors and plain data); refusing it: {exc}") from exc
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])


class DeepSpeedStrategy:
    """DeepSpeed ZeRO stage 0-3, fp32 (CPU-friendly); the engine clips, steps and schedules."""

    def __init__(self, rank: int, zero_stage: int, micro_batch: int, grad_clip: float | None,
                 standalone: Callable[[nn.Module], nn.Module], grad_accum_steps: int = 1) -> None:
        self.rank, self.zero_stage, self.standalone = rank, zero_stage, standalone
        self.config = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "gradient_accumulation_steps": grad_accum_steps,  # the engine scales the loss and steps at boundaries
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

    unwrap = staticmethod(_unwrap)

    def backward(self, model: Any, loss: torch.Tensor, last: bool) -> None:
        model.backward(loss)
        model.step()  # at the accumulation boundary: clips, steps the optimizer and the LR scheduler

    def step(self, model: Any, optimizer: Any, scheduler: Any, grad_clip: float | None) -> None:
        """Nothing left to do: the engine stepped in ``backward`` at the boundary."""

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


def make_strategy(scaling: Any, train: Any, rank: int, standalone: Callable[[nn.Module], nn.Module],
                  world_size: int | None = None) -> Strategy:
    """The strategy named by ``scaling.strategy`` (validation already checked the family supports it)."""
    if scaling.strategy == "deepspeed":
        return DeepSpeedStrategy(rank, scaling.zero_stage, train.batch_size, train.grad_clip, standalone,
                                 train.grad_accum_steps)
    return DDPStrategy(rank, train.grad_accum_steps, world_size)
