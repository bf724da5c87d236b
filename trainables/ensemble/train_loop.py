"""Ray Train worker loop for the Ensemble MoE on SST-2 (DDP: gloo on CPU, NCCL on GPU).

``train_loop_per_worker(config)`` receives the resolved experiment as plain data
(``orchestrator.config.Experiment.to_dict()``; ``data.root`` absolute) and reads top to bottom:

1. setup: SST-2 train (a seeded subset of ``model.max_train_examples``) and validation
   sentences, the ensemble (pretrained experts loaded, from-config experts built with
   tokenizers trained on the training subset), AdamW with per-part learning rates, the
   LR schedule (linear warmup, cosine to ``min_lr_ratio``), DDP;
2. resume from ``ray.train.get_checkpoint()`` (the model is rebuilt from its ``model/`` folder);
3. the loop: every ``eval_every`` steps (and at the last one) evaluate on the whole validation
   split (``model.max_eval_examples`` caps it; ``train.eval_batches`` is not used), then
   ``ray.train.report`` the metrics with a checkpoint.

Reported metrics: ``step``, ``train_loss`` (mixture NLL, mean since the last report),
``expert_loss``, ``balance_loss``, ``lr`` (the first group's), ``examples_per_s``,
``train_time_s``, ``loop_started_at``, and ``trainables.ensemble.fit.evaluate``'s dev metrics
(``val_loss``, ``val_accuracy``, ``val_acc/<expert>``, ``val_best_expert_accuracy``,
``val_gain_over_best``, ``gate_entropy``, ``gate/<expert>/{mean,std,p10,p50,p90,top1_frac}``).
Every rank evaluates the whole validation split (it is small), so no collective is needed.

Checkpoint layout (one directory per report)::

    model/           trainables.ensemble.save_checkpoint (metadata: step, experiment, dev metrics, serve section)
    train_state.pt   {"step", "optimizer", "scheduler"} (tensors/plain data; loaded weights_only)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint

from trainables.ensemble.checkpoint import load_checkpoint, save_checkpoint
from trainables.ensemble.config import EnsembleConfig
from trainables.ensemble.data import load_sst2, subset
from trainables.ensemble.fit import batches, build_optimizer, evaluate, lr_multiplier, train_step
from trainables.ensemble.model import EnsembleMoE


def unwrap(model: torch.nn.Module) -> EnsembleMoE:
    """The EnsembleMoE inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def summary_line(name: str, step: int, metrics: dict[str, float], experts: list[str]) -> str:
    """One human line: ensemble and per-expert dev accuracy, mean gate weights."""
    per = " ".join(f"{e} {metrics[f'val_acc/{e}']:.3f} (gate {metrics[f'gate/{e}/mean']:.2f})" for e in experts)
    return (f"[{name}] step {step} dev acc: ensemble {metrics['val_accuracy']:.4f} | {per} | "
            f"gain over best {metrics['val_gain_over_best']:+.4f}")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one Ensemble MoE on this Ray Train worker; see the module docstring."""
    started = time.time()
    cfg, train, scaling, data = config, config["train"], config["scaling"], config["data"]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device() if scaling["use_gpu"] else torch.device("cpu")
    torch.set_num_threads(max(1, int(scaling["cpus_per_worker"])))
    mcfg = EnsembleConfig.from_dict(cfg["model"])

    # 1. setup: same data and init on every rank (DDP also broadcasts rank 0's weights)
    train_set = subset(load_sst2(data["train_split"], data["root"]), mcfg.max_train_examples, train["seed"])
    val_set = load_sst2(data["val_split"], data["root"])
    val_set = val_set if mcfg.max_eval_examples is None else subset(val_set, mcfg.max_eval_examples, 0)
    torch.manual_seed(train["seed"])
    checkpoint = ray.train.get_checkpoint()
    step, state = 0, None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model = load_checkpoint(Path(d) / "model")
            state = torch.load(Path(d) / "train_state.pt", weights_only=True)
    else:
        model = EnsembleMoE.build(mcfg, [t for t, _ in train_set])
    model.to(device).train()
    optimizer = build_optimizer(model, train["lr"], train["weight_decay"])
    schedule = lambda s: lr_multiplier(s, train["warmup_steps"], train["max_steps"], train["min_lr_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if state is not None:  # 2. resume
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        if rank == 0:
            print(f"[{cfg['name']}] resumed from step {step}")
    ddp_model: Any = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    # 3. train
    gen = torch.Generator().manual_seed(train["seed"] * 1000 + rank + step)
    stream = batches(train_set, min(train["batch_size"], len(train_set)), gen)
    sums = {"train_loss": 0.0, "expert_loss": 0.0, "balance_loss": 0.0}
    window_steps, window_examples, window_start = 0, 0, time.time()
    while step < train["max_steps"]:
        texts, labels = next(stream)
        out = train_step(ddp_model, texts, labels.to(device), optimizer, scheduler, train["grad_clip"])
        step += 1
        window_steps += 1
        window_examples += len(texts)
        for key, value in (("train_loss", out.nll), ("expert_loss", out.expert_loss),
                           ("balance_loss", out.balance_loss)):
            sums[key] += value.item()

        if step % train["eval_every"] == 0 or step == train["max_steps"]:
            elapsed = time.time() - window_start
            metrics: dict[str, Any] = {"step": step, **{k: v / window_steps for k, v in sums.items()},
                                       "lr": scheduler.get_last_lr()[0],
                                       "examples_per_s": window_examples * ray.train.get_context().get_world_size()
                                       / max(elapsed, 1e-9)}
            metrics.update(evaluate(model, val_set, batch_size=64))
            metrics["train_time_s"] = time.time() - started
            metrics["loop_started_at"] = started  # unix time; lets the driver split its overhead
            if rank == 0:
                print(summary_line(cfg["name"], step, metrics, model.expert_names), flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                if rank == 0:
                    dev = {k: v for k, v in metrics.items() if k.startswith(("val_", "gate"))}
                    meta = {"step": step, "experiment": cfg["name"], "dev_metrics": dev, "serve": cfg.get("serve")}
                    save_checkpoint(model, Path(tmp) / "model", meta)
                    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict()}, Path(tmp) / "train_state.pt")
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None,
                                 checkpoint_dir_name=f"checkpoint_{step:06d}")
            sums = dict.fromkeys(sums, 0.0)
            window_steps, window_examples, window_start = 0, 0, time.time()
