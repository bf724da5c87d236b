"""The Ensemble MoE's recipe for the shared training loop (``trainables.training.loop``; DDP only).

- data: a seeded subset (``model.max_train_examples``) of SST-2 train, and the validation
  split (``model.max_eval_examples`` caps it; ``train.eval_batches`` is not used); batches
  of similar lengths with ``data.bucket_pool``;
- model: pretrained experts loaded, from-config experts built with tokenizers trained on the
  training subset; a resumed run rebuilds it from the checkpoint's ``model/`` folder;
- optimizer: one AdamW group per part (the gate at ``model.gate_lr``, each expert at its own
  ``lr``), betas (0.9, 0.999);
- loss: mixture NLL + ``expert_loss_coef`` * mean expert CE + ``balance_coef`` * load balance;
  reports average ``train_loss`` (the mixture NLL), ``expert_loss`` and ``balance_loss``;
- evaluation: ``trainables.ensemble.fit.evaluate`` on the whole validation split on every rank
  (it is small, so no collective): ``val_loss``, ``val_accuracy``, ``val_acc/<expert>``,
  ``val_best_expert_accuracy``, ``val_gain_over_best`` with its paired bootstrap CI and McNemar p,
  ``gate_entropy``,
  ``gate/<expert>/{mean,std,p10,p50,p90,top1_frac}``; rank 0 prints a summary line;
- checkpoint: ``trainables.ensemble.save_checkpoint`` (metadata: step, experiment, dev metrics,
  the serve section).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.ensemble.checkpoint import load_checkpoint, save_checkpoint
from trainables.ensemble.data import load_sst2, subset
from trainables.ensemble.fit import batches, evaluate, param_parts, total_loss
from trainables.ensemble.model import EnsembleMoE
from trainables.training import Recipe, StepOutput, decay_groups

Batch = tuple[list[str], torch.Tensor]  # (texts, labels (B,))


class EnsembleRecipe(Recipe):
    """Train one Ensemble MoE on SST-2 (``experiment.model`` is its ``EnsembleConfig``)."""

    throughput_unit = "examples"
    adam_betas = (0.9, 0.999)

    def setup(self) -> None:
        cfg, data, seed = self.experiment.model, self.experiment.data, self.experiment.train.seed
        self.train_set = subset(load_sst2(data.train_split, data.root), cfg.max_train_examples, seed)
        val_set = load_sst2(data.val_split, data.root)
        self.val_set = val_set if cfg.max_eval_examples is None else subset(val_set, cfg.max_eval_examples, 0)

    def build_model(self, resume_dir: Path | None) -> nn.Module:
        if resume_dir is not None:
            return load_checkpoint(resume_dir)
        return EnsembleMoE.build(self.experiment.model, [t for t, _ in self.train_set])

    def param_groups(self, model: nn.Module) -> list[dict]:
        train = self.experiment.train
        return decay_groups(param_parts(model, train.lr), train.weight_decay)  # type: ignore[arg-type]

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        return batches(self.train_set, min(self.experiment.train.batch_size, len(self.train_set)), generator,
                       self.experiment.data.bucket_pool)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        texts, labels = batch
        out = model(texts, labels.to(self.worker.device))
        logs = {"train_loss": out.nll, "expert_loss": out.expert_loss, "balance_loss": out.balance_loss}
        return StepOutput(total_loss(out, self.experiment.model), logs, num_items=len(texts))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.val_set, batch_size=64)  # type: ignore[arg-type]

    def on_report(self, step: int, metrics: dict[str, float]) -> None:
        if self.worker.rank == 0:
            experts = self.experiment.model.expert_names
            per = " ".join(f"{e} {metrics[f'val_acc/{e}']:.3f} (gate {metrics[f'gate/{e}/mean']:.2f})"
                           for e in experts)
            print(f"[{self.experiment.name}] step {step} dev acc: ensemble {metrics['val_accuracy']:.4f} | {per} | "
                  f"gain over best {metrics['val_gain_over_best']:+.4f}", flush=True)

    def save_model(self, model: nn.Module, directory: Path, metadata: dict[str, Any]) -> None:
        save_checkpoint(model, directory, metadata)  # type: ignore[arg-type]

    def checkpoint_metadata(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {"dev_metrics": {k: v for k, v in metrics.items() if k.startswith(("val_", "gate"))}}
