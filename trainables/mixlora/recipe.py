"""The MixLoRA family's recipe for the shared training loop (DDP, or DeepSpeed ZeRO-2 with the base frozen).

- data: the training sources of ``data.sources`` (``trainables.lm.instructions``; at most
  ``data.max_train_examples`` each), chat-formatted, loss on the answer tokens only; a fixed
  validation set of ``data.max_val_examples`` ARC-Easy *validation* questions;
- model: the base (``model.base``, ``trainables.lm.load_base``) frozen, with LoRA or MixLoRA
  adapters (``trainables.mixlora.checkpoint.apply_adapters``); only adapters and routers train;
- loss: the LM loss on answer tokens + ``load_balance_coef`` · the mean Switch load-balance loss
  of the MixLoRA layers; reports average ``train_loss`` (the LM loss) and ``load_balance_loss``;
- evaluation: ``val_loss`` over the validation set and, for MixLoRA, per layer ``L``
  ``routing/L{L}/entropy``, ``routing/L{L}/cv`` and ``routing/L{L}/load/E{i}`` over every
  position of the validation batches (the routers see padding too);
- checkpoint: the adapter directory (``save_adapter``), never the base weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.lm import instructions
from trainables.lm.base import load_base
from trainables.mixlora.checkpoint import apply_adapters, load_weights, save_adapter, trainable_parameters
from trainables.mixlora.surgery import router_outputs
from trainables.moe.stats import RoutingMeter
from trainables.training import Recipe, StepOutput
from trainables.training.metrics import validation_metrics

Batch = dict[str, torch.Tensor]  # input_ids, attention_mask, labels: each (B, T)


class MixLoRARecipe(Recipe):
    """Train LoRA or MixLoRA adapters on a frozen causal LM (``experiment.model`` is its ``MixLoRAConfig``)."""

    throughput_unit = "tokens"

    def setup(self) -> None:
        exp = self.experiment
        cfg, data = exp.model, exp.data
        dtype = torch.bfloat16 if cfg.precision == "bfloat16" else torch.float32
        self.base, self.tokenizer = load_base(cfg.base, dtype=dtype)
        train = instructions.training_set(data.sources, data.max_train_examples, exp.train.seed, data.root)
        self.encoded = [instructions.encode(self.tokenizer, ex, cfg.max_length) for ex in train]
        val = instructions.arc_examples("validation", data.root)[:data.max_val_examples]
        self.val = [instructions.encode(self.tokenizer, ex, cfg.max_length) for ex in val]

    def build_model(self, resume_dir: Path | None) -> nn.Module:
        model = apply_adapters(self.base, self.experiment.model)
        if resume_dir is not None:
            load_weights(model, resume_dir)
        if self.worker.rank == 0:
            total = sum(p.numel() for p in model.parameters())
            print(f"[{self.experiment.name}] {self.experiment.model.method}: {trainable_parameters(model):,} "
                  f"trainable of {total:,} parameters", flush=True)
        return model

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        train = self.experiment.train
        return instructions.batches(self.encoded, train.batch_size, self.tokenizer.pad_token_id, generator)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        batch = {k: v.to(self.worker.device) for k, v in batch.items()}
        out = model(**batch)
        routed = router_outputs(model)  # the MixLoRA layers' outputs of this forward (none for LoRA)
        balance = torch.stack([r.load_balance_loss for r in routed]).mean() if routed else out.loss.new_zeros(())
        loss = out.loss + self.experiment.model.load_balance_coef * balance
        return StepOutput(loss, {"train_loss": out.loss, "load_balance_loss": balance},
                          num_items=int(batch["attention_mask"].sum()))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        model.eval()
        batch_size = self.experiment.train.batch_size
        loss_sum, token_sum, routing = 0.0, 0, RoutingMeter()
        for i in range(0, len(self.val), batch_size):
            batch = {k: v.to(self.worker.device)
                     for k, v in instructions.collate(self.val[i:i + batch_size], self.tokenizer.pad_token_id).items()}
            out = model(**batch)
            answer_tokens = int((batch["labels"][:, 1:] != instructions.IGNORE).sum())  # HF shifts labels by one
            loss_sum += out.loss.item() * answer_tokens
            token_sum += answer_tokens
            for layer, routed in enumerate(router_outputs(model)):
                routing.add(f"routing/L{layer}", routed.stats)  # over every position of the batch, padding included
        return {**validation_metrics(loss_sum, token_sum, self.worker.device), **routing.metrics()}

    def save_model(self, model: nn.Module, directory: Path, metadata: dict[str, Any]) -> None:
        save_adapter(model, self.experiment.model, directory, metadata)

    def standalone(self, model: nn.Module) -> nn.Module:
        """``save_adapter`` copies every tensor it writes, so the DeepSpeed module itself will do (ZeRO 0-2)."""
        return model

    def checkpoint_metadata(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {"val_loss": metrics.get("val_loss"), "data": self.experiment.data.sources}
