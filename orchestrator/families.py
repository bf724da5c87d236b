"""The family registry: a family name -> its model config dataclass and Ray Train worker loop.

A family brings:

- a config dataclass with ``errors() -> list[str]`` (``field: got X, expected Y`` lines),
  ``to_dict()`` and ``from_dict()``;
- a ``train_loop_per_worker(config: dict)`` named by import path (imported lazily, so
  validating an experiment never imports Ray Train);
- the scalar metrics its loop reports (``sweep.metric`` must be one of them, or start with
  one of ``metric_prefixes``);
- the datasets it trains on: ``datasets`` names them with their ``splits``; empty means
  any text corpus of ``trainables.data.list_datasets()``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Family:
    """A registered model family."""

    name: str
    config_cls: type
    train_loop: str  # "module:function", imported on first use
    metrics: tuple[str, ...] = ()  # scalars each report carries
    metric_prefixes: tuple[str, ...] = ()  # families of per-layer keys, e.g. "routing/"
    datasets: tuple[str, ...] = ()  # dataset names the loop can train on; () = any text corpus
    splits: tuple[str, ...] = ("train", "validation", "test")  # splits of ``datasets``

    def reports(self, metric: str) -> bool:
        """Whether the family's train loop reports ``metric``."""
        return metric in self.metrics or (bool(self.metric_prefixes) and metric.startswith(self.metric_prefixes))

    def load_train_loop(self) -> Callable[[dict[str, Any]], None]:
        """Import and return the family's ``train_loop_per_worker``."""
        module, _, func = self.train_loop.partition(":")
        return getattr(importlib.import_module(module), func)


def _registry() -> dict[str, Family]:
    from trainables.ensemble.config import EnsembleConfig
    from trainables.more.config import MoREConfig

    lm_metrics = ("step", "train_loss", "val_loss", "val_perplexity", "lr", "tokens_per_s", "tokens_seen",
                  "load_balance_loss", "z_loss", "train_time_s",
                  # reported by the evaluation at the end of a run (evaluate.at_end, trainables.more.evaluation)
                  "wikitext_ppl", "wikitext_bpb", "babi_qa2_acc", "babi_qa3_acc", "arith_acc_in", "arith_acc_long",
                  "eval_load_cv", "eval_time_s")
    ensemble_metrics = ("step", "train_loss", "expert_loss", "balance_loss", "lr", "examples_per_s", "train_time_s",
                        "val_loss", "val_accuracy", "val_best_expert_accuracy", "val_gain_over_best", "gate_entropy")
    return {
        "more": Family("more", MoREConfig, "trainables.more.train_loop:train_loop_per_worker",
                       metrics=lm_metrics, metric_prefixes=("routing/", "arith_acc_d")),
        "ensemble": Family("ensemble", EnsembleConfig, "trainables.ensemble.train_loop:train_loop_per_worker",
                           metrics=ensemble_metrics, metric_prefixes=("val_acc/", "gate/"),
                           datasets=("sst2",), splits=("train", "validation")),
    }


FAMILIES: dict[str, Family] = _registry()


def get_family(name: str) -> Family:
    """The family registered as ``name``; KeyError naming the known ones otherwise."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]
