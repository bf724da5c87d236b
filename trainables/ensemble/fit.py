"""Ray-free training pieces of the Ensemble MoE: optimizer parts, loss, one step, evaluation.

The recipe (``recipe.py``) hands them to the shared training loop; tests call them directly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainables.ensemble.model import EnsembleMoE, EnsembleOutput
from trainables.significance import mcnemar_p, paired_bootstrap_ci
from trainables.training.optim import decay_groups


def param_parts(model: EnsembleMoE, lr: float) -> list[tuple[str, torch.nn.Module, float]]:
    """The optimizer's parts: the gate (``cfg.gate_lr``) and each expert (its spec's ``lr``, else ``lr``)."""
    cfg = model.cfg
    parts = [("gate", model.gate, cfg.gate_lr or lr)]
    parts += [(name, expert, float(spec.get("lr", lr)))
              for name, expert, spec in zip(cfg.expert_names, model.experts, cfg.experts, strict=True)]
    return parts


def build_optimizer(model: EnsembleMoE, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with one parameter group per part (``param_parts``) and decay split; frozen parameters left out."""
    return torch.optim.AdamW(decay_groups(param_parts(model, lr), weight_decay), lr=lr)


def total_loss(out: EnsembleOutput, cfg: Any) -> torch.Tensor:
    """Mixture NLL + ``expert_loss_coef`` * mean expert CE + ``balance_coef`` * load balance."""
    return out.nll + cfg.expert_loss_coef * out.expert_loss + cfg.balance_coef * out.balance_loss


def train_step(model: torch.nn.Module, texts: list[str], labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scheduler: Any = None, grad_clip: float | None = 1.0) -> EnsembleOutput:
    """One optimisation step on a batch; ``model`` may be DDP-wrapped. Returns the forward's output."""
    inner = model.module if hasattr(model, "module") else model
    out = model(texts, labels)
    optimizer.zero_grad(set_to_none=True)
    total_loss(out, inner.cfg).backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return out


@torch.no_grad()
def evaluate(model: EnsembleMoE, examples: list[tuple[str, int]], batch_size: int = 64) -> dict[str, float]:
    """Dev metrics over ``examples`` (every expert runs on every input).

    ``val_loss`` (mixture NLL), ``val_accuracy`` (ensemble), ``val_acc/<expert>`` (each expert
    alone), ``val_best_expert_accuracy``, ``val_gain_over_best`` (ensemble minus best expert),
    paired tests of that gain on these examples (``significance``): ``val_gain_ci_low`` and
    ``val_gain_ci_high`` (95 % paired bootstrap, 2000 resamples) and ``val_mcnemar_p`` (exact),
    ``gate_entropy`` (mean, normalised by log E) and per expert the distribution of its gate
    weight: ``gate/<expert>/mean``, ``/std``, ``/p10``, ``/p50``, ``/p90`` and ``/top1_frac``
    (share of inputs where it has the largest weight).
    """
    was_training = model.training
    model.eval()
    names = model.expert_names
    nll = 0.0
    correct, expert_correct, weights = [], [], []  # (n,) bool, (n, E) bool, (n, E) float per chunk
    examples = sorted(examples, key=lambda ex: len(ex[0].split()))  # less padding; every metric is order-free
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        labels = torch.tensor([y for _, y in chunk])
        out = model([t for t, _ in chunk], labels, all_experts=True)
        nll += out.nll.item() * len(chunk)
        correct.append(out.log_probs.argmax(-1).cpu() == labels)
        expert_correct.append(out.expert_log_probs.argmax(-1).cpu() == labels[:, None])
        weights.append(out.gate_weights.cpu())
    model.train(was_training)
    n = len(examples)
    w, right, expert_right = torch.cat(weights), torch.cat(correct), torch.cat(expert_correct)  # (N, E) (N,) (N, E)
    acc = right.float().mean().item()
    expert_acc = expert_right.float().mean(0).tolist()
    best = max(range(len(names)), key=lambda e: expert_acc[e])
    low, high = paired_bootstrap_ci(right, expert_right[:, best])
    metrics = {"val_loss": nll / n, "val_accuracy": acc, "val_best_expert_accuracy": expert_acc[best],
               "val_gain_over_best": acc - expert_acc[best], "val_gain_ci_low": low, "val_gain_ci_high": high,
               "val_mcnemar_p": mcnemar_p(right, expert_right[:, best])}
    entropy = -(w.clamp_min(1e-12).log() * w).sum(-1).mean().item()
    metrics["gate_entropy"] = entropy / math.log(len(names)) if len(names) > 1 else 0.0
    top1 = torch.nn.functional.one_hot(w.argmax(-1), len(names)).float().mean(0)
    q = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9]), dim=0)  # (3, E)
    for e, name in enumerate(names):
        metrics[f"val_acc/{name}"] = expert_acc[e]
        metrics[f"gate/{name}/mean"] = w[:, e].mean().item()
        metrics[f"gate/{name}/std"] = w[:, e].std().item() if n > 1 else 0.0
        metrics[f"gate/{name}/p10"], metrics[f"gate/{name}/p50"], metrics[f"gate/{name}/p90"] = q[:, e].tolist()
        metrics[f"gate/{name}/top1_frac"] = top1[e].item()
    return metrics


def batches(examples: list[tuple[str, int]], batch_size: int, generator: torch.Generator, bucket_pool: int = 0
            ) -> Any:  # Iterator[tuple[list[str], torch.Tensor]]
    """Endless shuffled batches ``(texts, labels (B,))``, reshuffled every epoch.

    ``bucket_pool`` k > 1: each run of k batches of the shuffled order is sorted by sentence
    length (words), cut into batches and those k batches are shuffled, so a batch holds
    sentences of similar length and is padded less; every example is still seen once an epoch.
    """
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        usable = len(order) - len(order) % batch_size
        pool = batch_size * max(bucket_pool, 1)
        for start in range(0, usable, pool):
            ids = order[start:min(start + pool, usable)]
            if bucket_pool > 1:
                ids.sort(key=lambda j: len(examples[j][0].split()))
            chunks = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
            for c in torch.randperm(len(chunks), generator=generator).tolist():
                chunk = [examples[j] for j in chunks[c]]
                yield [t for t, _ in chunk], torch.tensor([y for _, y in chunk])
