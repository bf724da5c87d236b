"""Ray Train worker loop for MoRE: DDP (gloo on CPU, NCCL on GPU) or DeepSpeed ZeRO 0-3.

``train_loop_per_worker(config)`` receives the resolved experiment as plain data
(``orchestrator.config.Experiment.to_dict()``; ``data.root`` absolute) and reads top to bottom:

1. setup: data (random windows of the byte-encoded corpus, or with ``data.mixture`` rows
   drawn from LM text, bAbI train and arithmetic: ``trainables.data.mixture``), model, AdamW, LR schedule
   (linear warmup, cosine decay to ``min_lr_ratio * lr``), the strategy wrapper;
2. resume from ``ray.train.get_checkpoint()`` if Ray Train restored one;
3. the loop: every ``eval_every`` steps (and at the last step) evaluate, then
   ``ray.train.report`` the metrics with a checkpoint.

Reported metrics (rank 0's; validation loss is averaged over ranks): ``step``,
``train_loss`` (mean since the last report), ``val_loss``, ``val_perplexity``, ``lr``,
``tokens_per_s`` (all workers), ``tokens_seen``, ``load_balance_loss``, ``z_loss``,
``train_time_s`` (seconds inside this loop, setup included), ``setup_s`` (loop start to the
first step), ``loop_started_at`` and ``worker_started_at`` (unix times this loop began and
this worker's process was created, so drivers can split their overhead), and per MoE layer ``L`` and
recurrence step/branch ``S``: ``routing/L{L}/S{S}/entropy`` (normalised router entropy),
``routing/L{L}/S{S}/cv`` (load-balance CV) and ``routing/L{L}/S{S}/load/E{i}`` (fraction
of routed tokens sent to expert ``i``), all measured on validation batches.

Checkpoint layout (one directory per report)::

    model/           trainables.more.save_checkpoint: config.json, model.safetensors, tokenizer.json
    train_state.pt   DDP: {"step", "optimizer", "scheduler"} (tensors/plain data; loaded weights_only)
    deepspeed/       DeepSpeed: engine.save_checkpoint (collective; every rank writes its shards)
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint

from trainables.data import ByteTokenizer, encode_corpus, load_text, random_batches
from trainables.data.mixture import build_mixture, mixture_batches
from trainables.more.checkpoint import save_checkpoint
from trainables.more.config import MoREConfig
from trainables.more.model import MoRELM

DS_TAG = "state"


# -- setup helpers ------------------------------------------------------------------------


def lr_multiplier(step: int, warmup: int, max_steps: int, min_ratio: float) -> float:
    """LambdaLR factor (a multiplier of the base LR): linear warmup, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings' 1-D params)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def load_tokens(cfg: dict[str, Any], tokenizer: ByteTokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation token streams (N,), read under ``data.root`` if set."""
    data = cfg["data"]
    if data.get("root"):
        os.environ["MOE_ORCH_DATA"] = data["root"]
    train = encode_corpus(load_text(data["dataset"], data["train_split"]), tokenizer)
    val = encode_corpus(load_text(data["dataset"], data["val_split"]), tokenizer)
    return train, val


def deepspeed_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The DeepSpeed JSON config: ZeRO stage, micro batch, clipping; fp32 (CPU-friendly)."""
    clip = cfg["train"]["grad_clip"]
    return {
        "train_micro_batch_size_per_gpu": cfg["train"]["batch_size"],
        "gradient_accumulation_steps": 1,
        "gradient_clipping": clip if clip is not None else 0.0,
        "zero_optimization": {"stage": cfg["scaling"]["zero_stage"]},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def unwrap(model: torch.nn.Module) -> MoRELM:
    """The MoRELM inside a DDP wrapper or DeepSpeed engine."""
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


# -- evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: MoRELM, val: torch.Tensor, cfg: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Validation loss and routing stats on ``eval_batches`` fixed batches (same on every eval)."""
    train, mcfg = cfg["train"], cfg["model"]
    rank = dist.get_rank() if dist.is_initialized() else 0
    gen = torch.Generator().manual_seed(10_000 + rank)
    was_training = model.training
    model.eval()
    losses, sums, counts = [], defaultdict(float), defaultdict(int)
    for _ in range(train["eval_batches"]):
        x, y = random_batches(val, train["batch_size"], mcfg["block_size"], gen)
        out = model(x.to(device), y.to(device))
        losses.append(out.lm_loss.item())
        for r in out.routing:
            key = f"routing/L{r.layer}/S{r.step}"
            load = r.stats.tokens_per_expert.float()
            load = load / load.sum().clamp_min(1)
            for i, frac in enumerate(load.tolist()):
                sums[f"{key}/load/E{i}"] += frac
            sums[f"{key}/entropy"] += float(r.stats.router_entropy)
            sums[f"{key}/cv"] += float(r.stats.load_balance_cv)
            counts[key] += 1
    model.train(was_training)
    val_loss = torch.tensor(sum(losses) / len(losses))
    if dist.is_initialized():
        dist.all_reduce(val_loss)
        val_loss /= dist.get_world_size()
    metrics = {"val_loss": val_loss.item(), "val_perplexity": math.exp(min(val_loss.item(), 50.0))}
    for name, total in sums.items():
        metrics[name] = total / counts[name.rsplit("/", 2)[0] if "/load/" in name else name.rsplit("/", 1)[0]]
    return metrics


# -- checkpoints --------------------------------------------------------------------------


def standalone_copy(module: MoRELM) -> MoRELM:
    """A fresh CPU MoRELM with ``module``'s weights: ZeRO keeps parameters as views of flat
    buffers, which safetensors refuses to save (the tied embedding/LM head in particular)."""
    copy = MoRELM(module.cfg)
    copy.load_state_dict({k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()})
    return copy


def save_state(directory: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, step: int,
               cfg: dict[str, Any], metrics: dict[str, float]) -> None:
    """Write this rank's part of the checkpoint into ``directory`` (collective under DeepSpeed)."""
    rank = ray.train.get_context().get_world_rank()
    metadata = {"step": step, "experiment": cfg["name"], "val_loss": metrics.get("val_loss"),
                "mixture": cfg["data"].get("mixture"), "arith_train_digits": cfg["data"].get("arith_train_digits")}
    if cfg["scaling"]["strategy"] == "deepspeed":
        model.save_checkpoint(str(directory / "deepspeed"), tag=DS_TAG, client_state={"step": step})
        module = unwrap(model)
        if cfg["scaling"]["zero_stage"] == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                if rank == 0:
                    save_checkpoint(standalone_copy(module), ByteTokenizer(), directory / "model", metadata)
        elif rank == 0:
            save_checkpoint(standalone_copy(module), ByteTokenizer(), directory / "model", metadata)
        return
    if rank == 0:
        save_checkpoint(unwrap(model), ByteTokenizer(), directory / "model", metadata)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   directory / "train_state.pt")


def restore_state(checkpoint: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                  cfg: dict[str, Any]) -> int:
    """Load a checkpoint written by ``save_state``; returns the step to continue from."""
    from safetensors.torch import load_model

    with checkpoint.as_directory() as d:
        d = Path(d)
        if cfg["scaling"]["strategy"] == "deepspeed":
            _, client = model.load_checkpoint(str(d / "deepspeed"), tag=DS_TAG)
            return int(client["step"])
        load_model(unwrap(model), str(d / "model" / "model.safetensors"), strict=True)
        state = torch.load(d / "train_state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["step"])


# -- the loop -----------------------------------------------------------------------------


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one MoRE model on this Ray Train worker; see the module docstring."""
    started = time.time()
    cfg, train, scaling = config, config["train"], config["scaling"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if scaling["use_gpu"] else torch.device("cpu")
    torch.set_num_threads(max(1, int(scaling["cpus_per_worker"])))

    # 1. setup: identical init on every rank, different data order per rank
    tokenizer = ByteTokenizer()
    train_tokens, val_tokens = load_tokens(cfg, tokenizer)
    mixture = None  # data.mixture: rows drawn from LM text / bAbI train / arithmetic (trainables.data.mixture)
    if cfg["data"].get("mixture"):
        mixture = build_mixture(train_tokens, cfg["data"]["mixture"], cfg["data"].get("arith_train_digits", 3),
                                tokenizer)
    torch.manual_seed(train["seed"])
    model: Any = MoRELM(MoREConfig.from_dict(cfg["model"]))
    optimizer = build_optimizer(model, train["lr"], train["weight_decay"])
    schedule = lambda s: lr_multiplier(s, train["warmup_steps"], train["max_steps"], train["min_lr_ratio"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if scaling["strategy"] == "deepspeed":
        import deepspeed

        model, optimizer, _, scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg))
    else:
        model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})

    # 2. resume
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        step = restore_state(checkpoint, model, optimizer, scheduler, cfg)
        if rank == 0:
            print(f"[{cfg['name']}] resumed from step {step}")
    gen = torch.Generator().manual_seed(train["seed"] * 1000 + rank + step)

    # 3. train
    setup_s = time.time() - started
    model.train()
    window_loss, window_steps, window_start = 0.0, 0, time.time()
    lb_loss = z_loss = 0.0
    tokens_per_step = world * train["batch_size"] * cfg["model"]["block_size"]
    while step < train["max_steps"]:
        if mixture is not None:
            x, y = mixture_batches(mixture, train["batch_size"], cfg["model"]["block_size"], gen)
        else:
            x, y = random_batches(train_tokens, train["batch_size"], cfg["model"]["block_size"], gen)
        out = model(x.to(device), y.to(device))
        if scaling["strategy"] == "deepspeed":
            model.backward(out.loss)
            model.step()  # clips, steps the optimizer and the LR scheduler
        else:
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if train["grad_clip"] is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train["grad_clip"])
            optimizer.step()
            scheduler.step()
        step += 1
        window_loss += out.lm_loss.item()
        window_steps += 1
        lb_loss, z_loss = out.load_balance_loss.item(), out.z_loss.item()

        if step % train["eval_every"] == 0 or step == train["max_steps"]:
            elapsed = time.time() - window_start
            metrics = {
                "step": step,
                "train_loss": window_loss / window_steps,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": tokens_per_step * window_steps / max(elapsed, 1e-9),
                "tokens_seen": tokens_per_step * step,
                "load_balance_loss": lb_loss,
                "z_loss": z_loss,
            }
            metrics.update(evaluate(unwrap(model), val_tokens, cfg, device))
            metrics["train_time_s"] = time.time() - started
            metrics["setup_s"] = setup_s
            metrics["loop_started_at"] = started  # unix times; let the driver split its overhead
            metrics["worker_started_at"] = psutil.Process().create_time()
            with tempfile.TemporaryDirectory() as tmp:
                save_state(Path(tmp), model, optimizer, scheduler, step, cfg, metrics)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"checkpoint_{step:06d}")
            window_loss, window_steps, window_start = 0.0, 0, time.time()
