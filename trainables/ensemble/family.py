"""The Ensemble MoE family's declaration (``orchestrator.contract.Family``): SST-2 data, the
recipe (DDP), metrics, checkpoint loader and the Serve endpoint. No evaluator: a run's dev
metrics come from training. Registered in ``orchestrator/registry.py``."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.contract import DataSection, Family, ServeSection
from orchestrator.schema import fmt
from trainables.ensemble.config import EnsembleConfig

SPLITS = ("train", "validation")


@dataclass
class SST2Data(DataSection):
    """SST-2 (``<root>/sst2/{train,dev}.tsv``, else GLUE from the hub when online)."""

    dataset: str = "sst2"
    train_split: str = "train"
    val_split: str = "validation"
    bucket_pool: int = 0  # 0: plain shuffled batches; k: sort each run of k batches by length (less padding)

    def errors(self) -> list[str]:
        errors = [] if self.dataset == "sst2" else [f"dataset: got {fmt(self.dataset)}, expected one of sst2"]
        if not isinstance(self.bucket_pool, int) or isinstance(self.bucket_pool, bool) or self.bucket_pool < 0:
            errors.append(f"bucket_pool: got {fmt(self.bucket_pool)}, expected an integer >= 0")
        for key in ("train_split", "val_split"):
            if getattr(self, key) not in SPLITS:
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected one of {', '.join(SPLITS)}")
        return errors


@dataclass
class EnsembleServe(ServeSection):
    """Serving an Ensemble MoE (``POST <route>/predict``): the shared Serve settings plus input limits."""

    route_prefix: str = "/ensemble"
    max_texts_per_request: int = 64  # more gets HTTP 413
    max_text_chars: int = 2000  # a longer text gets HTTP 413 (rejected, not truncated)

    def errors(self) -> list[str]:
        errors = super().errors()
        for key in ("max_texts_per_request", "max_text_chars"):
            if not getattr(self, key) >= 1:
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected >= 1")
        return errors


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
)
