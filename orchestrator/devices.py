"""Where inference runs: the device setting of ``moe-orch evaluate`` / ``generate`` (``--device``,
``evaluate.device``), resolved to ``cpu`` or ``cuda`` before anything loads.

- ``cpu``: as moe-orch always ran;
- ``cuda``: the family's model on this process's CUDA device (bfloat16 for the LM families,
  ``trainables.lm.base.to_device``); refused, with a message naming why, for a family that does not
  declare ``cuda`` in ``Family.devices``, with ``--weights int8`` or ``int4`` (CPU formats), or where torch sees
  no CUDA device;
- ``auto`` (the default): ``cuda`` when all of that holds, else ``cpu``, so a machine without a GPU
  keeps its behaviour exactly.

A resolved ``cuda`` evaluation that runs inside a Ray worker (``evaluate.at_end`` in a sweep trial)
runs as a Ray task that asks for one GPU (``gpu_task_options``); on ``cpu`` nothing asks Ray for one.
"""

from __future__ import annotations

from typing import Any

from orchestrator.contract import DEVICES, Family


class DeviceError(ValueError):
    """A device setting that cannot be honoured here (bad input: exit 2)."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA device in this process."""
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str, family: Family, weights: str = "fp32", name: str = "--device") -> str:
    """``"cpu"`` or ``"cuda"`` for the setting ``device`` (``auto``, ``cpu``, ``cuda``; module docstring).

    ``name`` is how messages call the setting (``--device``, ``evaluate.device``). Raises DeviceError.
    """
    if device not in DEVICES:
        raise DeviceError(f"{name}: got {device!r}, expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda" if family.runs_on_cuda and weights == "fp32" and cuda_available() else "cpu"
    if not family.runs_on_cuda:
        raise DeviceError(f"{name} cuda: the {family.name} family runs on cpu only")
    if weights != "fp32":
        raise DeviceError(f"{name} cuda: --weights {weights} runs on cpu only (use --weights fp32 on cuda)")
    if not cuda_available():
        raise DeviceError(f"{name} cuda: no CUDA device here (torch.cuda.is_available() is false: no GPU, or a "
                          "CPU build of torch)")
    return "cuda"


def gpu_task_options(device: str) -> dict[str, Any] | None:
    """Ray options for work on a resolved ``device`` that runs as a Ray task: one GPU for ``cuda`` (and no
    CPU: the caller, a Ray worker, holds its own and waits); None for ``cpu``: it runs in the calling
    process, asking Ray for nothing."""
    return {"num_gpus": 1, "num_cpus": 0} if device == "cuda" else None
