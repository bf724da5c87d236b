"""The Ensemble MoE family: a learned gate mixes several HF sequence classifiers (SST-2).

- ``EnsembleConfig`` (config.py): experts, gate, top-k, expert training mode, aux losses.
- ``EnsembleMoE`` / ``EnsembleOutput`` (model.py): the mixture ``p(y|x) = sum_e g_e(x) p_e(y|x)``.
- ``HashedNgramGate`` (gate.py): the gating network over a hashed n-gram bag.
- ``save_checkpoint`` / ``load_checkpoint`` (checkpoint.py): self-describing checkpoints.
- ``load_sst2`` (data.py); ``evaluate`` / ``train_step`` (fit.py); the Ray Train loop in train_loop.py.

Names are imported lazily, so reading the config (experiment validation) does not import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EnsembleConfig": "config", "EnsembleMoE": "model", "EnsembleOutput": "model", "HashedNgramGate": "gate",
    "load_checkpoint": "checkpoint", "read_checkpoint_config": "checkpoint", "save_checkpoint": "checkpoint",
    "load_sst2": "data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"trainables.ensemble.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'trainables.ensemble' has no attribute {name!r}")
