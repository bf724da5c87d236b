"""Router pictures of a MixLoRA model (the evaluator writes them beside ``metrics.json``).

- ``measure_routing``: per MixLoRA layer, the share of top-k assignments each expert gets, the
  router's normalised entropy (H / log E) and the load CV, over the *real* tokens (padding
  excluded) of a list of chat-formatted examples (prompt and gold answer, as training sees them);
- ``expert_load_png``: one heatmap per source (rows = layers, columns = experts, colour = share × E,
  so 1 is uniform) and a panel of entropy and CV per layer, so a reader sees at a glance whether
  routing is balanced and whether it differs by domain (ARC-Easy vs HellaSwag vs code);
- ``routing_curves_png``: entropy and CV per layer against the training step, from the run's
  ``routing/L{l}/entropy|cv`` history (coloured by layer depth).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from trainables.lm import instructions  # noqa: E402
from trainables.mixlora.surgery import mixlora_blocks, router_outputs  # noqa: E402
from trainables.moe import load_balance_cv, load_share, router_entropy  # noqa: E402


@dataclass(frozen=True)
class LayerRouting:
    """Routing of one set of examples through every MixLoRA layer."""

    load: torch.Tensor  # (L, E) share of the top-k assignments per expert (rows sum to 1)
    entropy: torch.Tensor  # (L,) mean router entropy / log E over tokens
    cv: torch.Tensor  # (L,) std / mean of the assignment counts per expert
    tokens: int  # real tokens routed (per layer)

    def as_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "load": self.load.tolist(), "entropy": self.entropy.tolist(),
                "cv": self.cv.tolist()}


@torch.no_grad()
def measure_routing(model: nn.Module, tokenizer: Any, examples: Sequence[instructions.Example], max_length: int = 256,
                    batch_size: int = 8) -> LayerRouting | None:
    """Route ``examples`` through ``model``; None when it has no MixLoRA layers (plain LoRA, a bare base)."""
    blocks = mixlora_blocks(model)
    if not blocks or not examples:
        return None
    num_layers, num_experts = len(blocks), blocks[0].num_experts
    counts = torch.zeros(num_layers, num_experts)
    entropy_sum = torch.zeros(num_layers)
    tokens = 0
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [instructions.encode(tokenizer, ex, max_length) for ex in examples]
    for i in range(0, len(encoded), batch_size):
        batch = instructions.collate(encoded[i:i + batch_size], tokenizer.pad_token_id)
        model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        real = batch["attention_mask"].reshape(-1).bool()  # (B·T,) routers see every position
        tokens += int(real.sum())
        for layer, out in enumerate(router_outputs(model)):
            chosen = out.expert_indices[real.to(out.expert_indices.device)].reshape(-1).cpu()  # (n·k,)
            counts[layer] += torch.bincount(chosen, minlength=num_experts).float()
            probs = out.router_logits[real.to(out.router_logits.device)].float().softmax(-1).cpu()  # (n, E)
            entropy_sum[layer] += float(router_entropy(probs)) * len(probs)  # token-weighted over batches
    model.train(was_training)
    return LayerRouting(load_share(counts), entropy_sum / max(1, tokens), load_balance_cv(counts), tokens)


def expert_load_png(routing: Mapping[str, LayerRouting], path: str | Path, title: str) -> Path:
    """Heatmaps of ``share × E`` (layers × experts) per source, then entropy and CV per layer."""
    sources = list(routing)
    num_layers, num_experts = next(iter(routing.values())).load.shape
    fig, axes = plt.subplots(1, len(sources) + 1, figsize=(3.2 * len(sources) + 4.5, max(5.0, 0.22 * num_layers + 2)),
                             gridspec_kw={"width_ratios": [1] * len(sources) + [1.4]}, layout="constrained")
    top = max(2.0, max(float(r.load.max()) * num_experts for r in routing.values()))
    image = None
    for ax, source in zip(axes, sources, strict=False):
        r = routing[source]
        image = ax.imshow((r.load * num_experts).numpy(), aspect="auto", cmap="RdBu_r", vmin=0, vmax=top)
        ax.set_title(f"{source}\n({r.tokens:,} tokens)", fontsize=9)
        ax.set_xticks(range(num_experts), [f"E{e}" for e in range(num_experts)], fontsize=7)
        ax.set_yticks(range(0, num_layers, max(1, num_layers // 10)))
        ax.set_xlabel("expert")
    axes[0].set_ylabel("layer")
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(sources)]), fraction=0.03, pad=0.02,
                     label="share of assignments × E  (1 = uniform)")
    ax = axes[-1]
    layers = range(num_layers)
    for i, source in enumerate(sources):
        color = plt.get_cmap("tab10")(i)
        ax.plot(routing[source].entropy.numpy(), layers, color=color, label=f"entropy / log E, {source}")
        ax.plot(routing[source].cv.numpy(), layers, color=color, linestyle="--", label=f"load CV, {source}")
    ax.invert_yaxis()
    ax.set_xlabel("value")
    ax.set_ylabel("layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    ax.set_title("router entropy (solid) and load CV (dashed)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_LAYER = re.compile(r"^routing/L(\d+)/(entropy|cv)$")


def routing_curves_png(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path,
                       title: str) -> Path | None:
    """Entropy and CV per layer over training, from ``{"routing/L3/entropy": [(step, value)], ...}``;
    None (nothing written) when the history has no such curves."""
    series: dict[str, dict[int, list[tuple[int, float]]]] = {"entropy": {}, "cv": {}}
    for name, points in history.items():
        match = _LAYER.match(name)
        if match and points:
            series[match.group(2)][int(match.group(1))] = sorted(points)
    if not any(series.values()):
        return None
    num_layers = 1 + max(layer for curves in series.values() for layer in curves)
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (kind, label) in zip(axes, {"entropy": "router entropy / log E", "cv": "load CV (std / mean)"}.items(),
                                 strict=True):
        for layer, points in sorted(series[kind].items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=2.5, linewidth=1,
                    color=cmap(layer / max(1, num_layers - 1)))
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, num_layers - 1))
    fig.colorbar(mappable, ax=list(axes), label="layer", fraction=0.03, pad=0.02)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
