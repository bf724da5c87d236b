"""``moe-orch predict``: a family's offline inference on texts, from a checkpoint directory or an MLflow run.

TARGET resolves as for ``moe-orch evaluate`` and ``generate`` (``orchestrator.checkpoints.resolve_checkpoint``):
a checkpoint directory (a checkpoint, a Ray checkpoint holding one in ``model/``, or a train run folder:
its newest), or an MLflow run id (its ``checkpoint`` artifact, downloaded to a temporary folder). The
checkpoint's manifest names its family; the family's ``predictor`` rebuilds the model with the family's
own loader and answers one ``orchestrator.contract.Prediction`` per text. A family without a predictor
is refused with a message naming it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

from orchestrator.checkpoints import resolve_checkpoint
from orchestrator.contract import Prediction, import_ref
from orchestrator.registry import family_names, family_with, get_family
from trainables.training.manifest import UnsafeCheckpointError, read_manifest


class PredictError(ValueError):
    """Bad input to ``moe-orch predict`` (exit 2): no checkpoint, an unknown run, a family without a predictor."""


def predictor_families() -> list[str]:
    """The registered families whose declaration has a ``predictor``."""
    return [name for name in family_names() if get_family(name).predictor is not None]


def predict_texts(target: str, texts: Sequence[str], tracking_uri: str | None = None) -> list[Prediction]:
    """TARGET's model on ``texts``: one ``Prediction`` per text, in order. PredictError for bad input."""
    with tempfile.TemporaryDirectory(prefix="moe-orch-predict-") as tmp:
        try:
            checkpoint = resolve_checkpoint(target, tracking_uri, tmp)
            manifest = read_manifest(checkpoint) if checkpoint is not None else None
        except (LookupError, UnsafeCheckpointError) as exc:
            raise PredictError(str(exc)) from exc
        if checkpoint is None or manifest is None:
            raise PredictError(f"{target}: got neither a checkpoint directory nor an MLflow run id (32 hex digits)")
        try:
            family = family_with(manifest.family, "predictor", target)
        except LookupError as exc:
            raise PredictError(f"{exc}; moe-orch predict takes checkpoints of the families "
                               f"{', '.join(predictor_families())}") from exc
        return list(import_ref(family.predictor)(checkpoint, list(texts)))
