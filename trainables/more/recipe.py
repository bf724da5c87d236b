"""MoRE's recipe for the shared training loop (``trainables.training.loop``): DDP or DeepSpeed ZeRO 0-3.

- data: random windows of the byte-encoded corpus, or with ``data.mixture`` rows drawn from
  LM text, bAbI train and arithmetic (``trainables.data.mixture``; arithmetic in
  ``data.arith_ops``, answers reversed if ``data.arith_reverse``, operands zero-padded if
  ``data.arith_pad``). A mixture of arithmetic alone is validated on held-out arithmetic lines
  in the same format (seed ``ARITH_VAL_SEED``), not on ``data.dataset``'s validation split;
- steps: ``train.max_steps``, or with ``model.flops_budget`` the steps that budget of training
  FLOPs buys (``trainables.more.budget``; capped at ``train.max_steps``), set in ``setup``
  on this recipe's copy of the experiment; every report carries ``flops_per_step``,
  ``train_flops`` (FLOPs of the steps done) and ``budget_steps``;
- loss: the model's ``loss`` (LM loss plus its weighted load-balance and z-losses); the
  reports average ``train_loss`` (the LM loss), ``load_balance_loss`` and ``z_loss``;
- evaluation: validation loss (averaged over ranks) and routing stats on ``train.eval_batches``
  fixed batches: per MoE layer ``L`` and recurrence step/branch ``S``,
  ``routing/L{L}/S{S}/entropy`` (normalised router entropy), ``routing/L{L}/S{S}/cv``
  (load-balance CV) and ``routing/L{L}/S{S}/load/E{i}`` (fraction of routed tokens sent to
  expert ``i``);
- checkpoint: ``trainables.more.save_checkpoint`` (config.json manifest, model.safetensors,
  tokenizer.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model
from torch import nn

from trainables.data import ByteTokenizer, encode_corpus, load_text, random_batches
from trainables.data.mixture import ARITH_VAL_SEED, arithmetic_pool, arithmetic_stream, build_mixture, mixture_batches
from trainables.moe.stats import RoutingMeter
from trainables.more.budget import FlopsPlan, plan_steps, train_flops_per_step
from trainables.more.checkpoint import WEIGHTS_FILE, save_checkpoint
from trainables.more.model import MoRELM
from trainables.training import Recipe, StepOutput
from trainables.training.metrics import validation_metrics

Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y), each (B, T) token ids


class MoRERecipe(Recipe):
    """Train one MoRE language model (``experiment.model`` is its ``MoREConfig``)."""

    throughput_unit = "tokens"

    def setup(self) -> None:
        data = self.experiment.data
        self.tokenizer = ByteTokenizer()
        self.train_tokens = encode_corpus(load_text(data.dataset, data.train_split, data.root), self.tokenizer)
        self.val_tokens = encode_corpus(load_text(data.dataset, data.val_split, data.root), self.tokenizer)
        self.mixture = None
        if data.mixture:
            self.mixture = build_mixture(self.train_tokens, data.mixture, data.arith_train_digits, self.tokenizer,
                                         data.root, data.arith_format())
            if self.mixture.names == ("arithmetic",):  # validate in the training format
                pool = arithmetic_pool(data.arith_train_digits, data.arith_format(), ARITH_VAL_SEED)
                self.val_tokens = arithmetic_stream(pool, self.tokenizer)
        self.flops_plan = self._plan_flops()

    def _plan_flops(self) -> FlopsPlan | None:
        """With ``model.flops_budget``: count one step's FLOPs and set ``train.max_steps`` to what the budget buys."""
        cfg, train = self.experiment.model, self.experiment.train
        if cfg.flops_budget is None:
            return None
        per_step = train_flops_per_step(cfg, train.batch_size, train.grad_accum_steps, self.worker.world_size)
        plan = plan_steps(cfg.flops_budget, per_step, train.max_steps)
        self.experiment = dataclasses.replace(self.experiment, train=dataclasses.replace(train, max_steps=plan.steps))
        if self.worker.rank == 0:
            print(f"[{self.experiment.name}] flops budget {plan.budget:.3g}: {per_step:.3g} training FLOPs per step "
                  f"-> {plan.steps} steps ({plan.train_flops:.3g} FLOPs)", flush=True)
        return plan

    def build_model(self, resume_dir: Path | None) -> nn.Module:
        model = MoRELM(self.experiment.model)
        if resume_dir is not None:
            load_model(model, str(resume_dir / WEIGHTS_FILE), strict=True)
        return model

    def batches(self, generator: torch.Generator) -> Iterator[Batch]:
        batch_size, block = self.experiment.train.batch_size, self.experiment.model.block_size
        while True:
            if self.mixture is not None:
                yield mixture_batches(self.mixture, batch_size, block, generator)
            else:
                yield random_batches(self.train_tokens, batch_size, block, generator)

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        x, y = batch
        device = self.worker.device
        out = model(x.to(device), y.to(device))
        logs = {"train_loss": out.lm_loss, "load_balance_loss": out.load_balance_loss, "z_loss": out.z_loss}
        return StepOutput(out.loss, logs, num_items=x.numel())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation loss and routing stats on ``eval_batches`` fixed batches (the same at every eval)."""
        train, block = self.experiment.train, self.experiment.model.block_size
        gen = torch.Generator().manual_seed(10_000 + self.worker.rank)
        model.eval()
        loss_sum, routing = 0.0, RoutingMeter()
        for _ in range(train.eval_batches):
            x, y = random_batches(self.val_tokens, train.batch_size, block, gen)
            out = model(x.to(self.worker.device), y.to(self.worker.device))
            loss_sum += out.lm_loss.item()
            for r in out.routing:
                routing.add(f"routing/L{r.layer}/S{r.step}", r.stats)
        metrics = validation_metrics(loss_sum, train.eval_batches, self.worker.device)  # every rank: as many batches
        if self.flops_plan is not None:
            metrics.update(flops_per_step=float(self.flops_plan.flops_per_step), budget_steps=self.flops_plan.steps,
                           train_flops=float(self.flops_plan.flops_per_step * self.step))
        metrics.update(routing.metrics())
        return metrics

    def save_model(self, model: nn.Module, directory: Path, metadata: dict[str, Any]) -> None:
        save_checkpoint(model, self.tokenizer, directory, metadata)  # type: ignore[arg-type]

    def standalone(self, model: nn.Module) -> nn.Module:
        copy = MoRELM(model.cfg)
        copy.load_state_dict({k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()})
        return copy

    def checkpoint_metadata(self, metrics: dict[str, float]) -> dict[str, Any]:
        data = self.experiment.data
        return {"val_loss": metrics.get("val_loss"), "mixture": data.mixture,
                "arith_train_digits": data.arith_train_digits, "arith_ops": list(data.arith_ops),
                "arith_reverse": data.arith_reverse, "arith_pad": data.arith_pad}
