"""Offline inference of a saved Ensemble MoE (the family contract's ``predictor``, behind ``moe-orch predict``).

The seed's ``inference.py`` loads a checkpoint, runs new texts through the ensemble and prints the
predicted labels; here each text also gets its class probabilities and the gate's weight on every
expert (the same numbers ``POST /ensemble/predict`` answers, ``serving.py``).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.contract import Prediction
from trainables.ensemble.checkpoint import load_checkpoint, read_checkpoint_config


def predict_texts(checkpoint_dir: Path, texts: list[str]) -> list[Prediction]:
    """The Ensemble MoE in ``checkpoint_dir`` (rebuilt by ``load_checkpoint``, CPU, eval mode) on ``texts``:
    one ``Prediction`` per text, in order; its probabilities and gate weights each sum to 1."""
    model = load_checkpoint(checkpoint_dir)
    labels = read_checkpoint_config(checkpoint_dir)["label_names"]
    out = model.predict(texts)  # labels (B,), probabilities (B, C), gate_weights (B, E) as lists
    return [Prediction(text, labels[label], dict(zip(labels, probs, strict=True)),
                       dict(zip(model.expert_names, weights, strict=True)))
            for text, label, probs, weights in zip(texts, out["labels"], out["probabilities"], out["gate_weights"],
                                                   strict=True)]
