"""The Ensemble MoE family's declaration (``orchestrator.contract.Family``): SST-2 data, the
recipe (DDP), metrics, checkpoint loader, the Serve endpoint and the offline predictor
(``moe-orch predict``). No evaluator: a run's dev metrics come from training. Registered in
``orchestrator/registry.py``."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.contract import DataSection, Family, ServeSection
from orchestrator.schema import override, setting
from trainables.ensemble.config import EnsembleConfig

SPLITS = ("train", "validation")


@dataclass
class SST2Data(DataSection):
    """SST-2 (``<root>/sst2/{train,dev}.tsv``, else GLUE from the hub when online)."""

    dataset: str = setting("sst2", one_of=("sst2",), doc="the only dataset")
    train_split: str = setting("train", one_of=SPLITS, doc="the split to train on")
    val_split: str = setting("validation", one_of=SPLITS, doc="the split to validate on")
    bucket_pool: int = setting(0, ge=0, doc="0: plain shuffled batches; k: sort each run of k batches by length "
                                            "(less padding)")


@dataclass
class EnsembleServe(ServeSection):
    """Serving an Ensemble MoE (``POST <route>/predict``): the shared Serve settings plus input limits."""

    route_prefix: str = override(ServeSection, "route_prefix", "/ensemble")
    max_texts_per_request: int = setting(64, ge=1, doc="more gets HTTP 413")
    max_text_chars: int = setting(2000, ge=1, doc="a longer text gets HTTP 413 (rejected, not truncated)")


FAMILY = Family(
    name="ensemble",
    model=EnsembleConfig,
    data=SST2Data,
    recipe="trainables.ensemble.recipe:EnsembleRecipe",
    checkpoint="trainables.ensemble.checkpoint:load_model_from",
    strategies=("ddp",),
    metrics=("step", "train_loss", "expert_loss", "balance_loss", "lr", "examples_per_s", "examples_seen",
             "train_time_s", "val_loss", "val_accuracy", "val_best_expert_accuracy", "val_gain_over_best",
             "val_gain_ci_low", "val_gain_ci_high", "val_mcnemar_p", "gate_entropy"),
    metric_prefixes=("val_acc/", "gate/"),
    progress=(("train_loss", "train_loss"), ("val_loss", "val_loss"), ("val_accuracy", "val_acc")),
    serve=EnsembleServe,
    endpoint="trainables.ensemble.serving:EnsembleEndpoint",
    predictor="trainables.ensemble.predict:predict_texts",
)
