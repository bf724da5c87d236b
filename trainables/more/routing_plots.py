"""Routing pictures: token-flow Sankey (plotly HTML + matplotlib PNG), expert-load bars, training curves.

- ``sankey_html`` / ``sankey_png``: one column per MoE call in execution order, labelled
  ``L{layer} S{step}`` (S = recurrence step, or branch for more_c); one node per expert
  (``E{i}``) sized by the tokens whose top-1 expert it is; a band from call c to call c+1
  carries the tokens that went from expert a to expert b. For more_c the branches run
  side by side on the input, so no band joins the last layer of one branch to the first
  layer of the next. The PNG is drawn by matplotlib (no browser/kaleido needed).
- ``load_bars_png``: per (layer, step) the fraction of routed assignments per expert, with
  the uniform share 1/E dashed.
- ``curves_png``: router entropy (normalised by log E) and load-balance CV against the
  training step, one line per (layer, step), from the metric history the loop reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import PathPatch, Rectangle  # noqa: E402
from matplotlib.path import Path as MplPath  # noqa: E402

from trainables.more.evaluation.routing import RoutingTrace  # noqa: E402

PALETTE = plt.get_cmap("tab10").colors


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Lay out ``fig``, write it as PNG to ``path`` and free it."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _rgba(i: int, alpha: float) -> str:
    r, g, b = (int(255 * c) for c in PALETTE[i % len(PALETTE)])
    return f"rgba({r},{g},{b},{alpha})"


def call_label(layer: int, step: int) -> str:
    return f"L{layer} S{step}"


def sankey_links(trace: RoutingTrace) -> list[tuple[int, int, int, int, list[int]]]:
    """``(call c, expert a, expert b, tokens, token positions)`` for the bands from call c to c + 1."""
    links = []
    for c in range(len(trace.calls) - 1):
        if trace.parallel_steps and trace.calls[c + 1][1] != trace.calls[c][1]:
            continue  # more_c: the next branch starts again from the input
        pairs: dict[tuple[int, int], list[int]] = {}
        for t, (a, b) in enumerate(zip(trace.top1[c], trace.top1[c + 1], strict=True)):
            pairs.setdefault((a, b), []).append(t)
        links += [(c, a, b, len(ts), ts) for (a, b), ts in sorted(pairs.items())]
    return links


def _title(trace: RoutingTrace, sample: str) -> str:
    return (f"Token routing, {trace.variant}: top-1 expert of each of {len(trace.tokens)} tokens through every "
            f"MoE layer (L) and recurrence step / branch (S) — {sample}")


def sankey_html(trace: RoutingTrace, path: str | Path, sample: str = "first evaluation sample") -> Path:
    """Interactive plotly Sankey of ``trace`` (hover a band for its tokens)."""
    import plotly.graph_objects as go

    n_calls, E = len(trace.calls), trace.num_experts
    node = lambda c, e: c * E + e
    labels, xs, ys, colors = [], [], [], []
    for c, (layer, step) in enumerate(trace.calls):
        for e in range(E):
            labels.append(f"{call_label(layer, step)} E{e}")
            xs.append(0.01 + 0.98 * c / max(1, n_calls - 1))
            ys.append(0.01 + 0.98 * e / max(1, E - 1))
            colors.append(_rgba(e, 0.9))
    links = sankey_links(trace)
    snippet = lambda ts: "".join(trace.tokens[t] for t in ts[:40]) + ("…" if len(ts) > 40 else "")
    fig = go.Figure(go.Sankey(
        arrangement="fixed",
        node=dict(label=labels, x=xs, y=ys, color=colors, pad=8, thickness=14),
        link=dict(source=[node(c, a) for c, a, _, _, _ in links], target=[node(c + 1, b) for c, _, b, _, _ in links],
                  value=[n for *_, n, _ in links], color=[_rgba(a, 0.35) for _, a, _, _, _ in links],
                  customdata=[snippet(ts) for *_, ts in links],
                  hovertemplate="%{source.label} → %{target.label}<br>%{value} tokens: %{customdata}<extra></extra>"),
    ))
    fig.update_layout(title=dict(text=_title(trace, sample), font=dict(size=13)), font=dict(size=11),
                      width=max(900, 130 * n_calls), height=600)
    path = Path(path)
    fig.write_html(str(path), include_plotlyjs=True)
    return path


def _band(ax: plt.Axes, x0: float, x1: float, top0: float, bot0: float, top1: float, bot1: float, color: tuple) -> None:
    """A filled band from the vertical segment [bot0, top0] at x0 to [bot1, top1] at x1 (cubic Béziers)."""
    mid = (x0 + x1) / 2
    verts = [(x0, top0), (mid, top0), (mid, top1), (x1, top1), (x1, bot1), (mid, bot1), (mid, bot0), (x0, bot0),
             (x0, top0)]
    codes = [MplPath.MOVETO, *[MplPath.CURVE4] * 3, MplPath.LINETO, *[MplPath.CURVE4] * 3, MplPath.CLOSEPOLY]
    ax.add_patch(PathPatch(MplPath(verts, codes), facecolor=color, edgecolor="none", alpha=0.35))


def sankey_png(trace: RoutingTrace, path: str | Path, sample: str = "first evaluation sample") -> Path:
    """Static Sankey of ``trace`` drawn with matplotlib: columns = MoE calls, nodes = experts."""
    n_calls, E, T = len(trace.calls), trace.num_experts, len(trace.tokens)
    gap, width = 0.04, 0.12
    scale = (1 - gap * (E - 1)) / T  # node height per token
    counts = [Counter(col) for col in trace.top1]
    node_bottom = {}  # (c, e) -> y of the node's bottom; experts stacked top (E0) to bottom
    for c in range(n_calls):
        y = 1.0
        for e in range(E):
            h = counts[c][e] * scale
            node_bottom[(c, e)] = y - h
            y -= h + gap
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * n_calls + 2), 6.5))
    out_used = Counter()  # (c, e) -> height already used by outgoing bands
    in_used = Counter()
    for c, a, b, n, _ in sankey_links(trace):
        h = n * scale
        top0 = node_bottom[(c, a)] + counts[c][a] * scale - out_used[(c, a)]
        top1 = node_bottom[(c + 1, b)] + counts[c + 1][b] * scale - in_used[(c + 1, b)]
        _band(ax, c + width / 2, c + 1 - width / 2, top0, top0 - h, top1, top1 - h, PALETTE[a % len(PALETTE)])
        out_used[(c, a)] += h
        in_used[(c + 1, b)] += h
    for (c, e), bottom in node_bottom.items():
        h = counts[c][e] * scale
        if not counts[c][e]:
            continue
        ax.add_patch(Rectangle((c - width / 2, bottom), width, h, color=PALETTE[e % len(PALETTE)]))
        if h >= 0.05:
            ax.text(c, bottom + h / 2, f"E{e}\n{counts[c][e]}", ha="center", va="center", fontsize=8,
                    color="white", fontweight="bold")
        else:  # too thin for a label inside: put it on the left
            ax.text(c - width / 2 - 0.02, bottom + h / 2, f"E{e} ({counts[c][e]})", ha="right", va="center",
                    fontsize=7)
    ax.set_xlim(-0.5, n_calls - 0.5)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks(range(n_calls), [call_label(*call) for call in trace.calls])
    ax.set_yticks([])
    ax.set_xlabel("MoE call in execution order (L = layer, S = recurrence step; branch for more_c)")
    ax.set_ylabel(f"tokens by top-1 expert (node height ∝ tokens, {T} in all)")
    for spine in ("top", "right", "left"):
        ax.spines[spine].set_visible(False)
    handles = [Rectangle((0, 0), 1, 1, color=PALETTE[e % len(PALETTE)]) for e in range(E)]
    ax.legend(handles, [f"expert E{e}" for e in range(E)], loc="upper center", bbox_to_anchor=(0.5, -0.12),
              ncol=min(E, 8), frameon=False)
    ax.set_title(_title(trace, sample), fontsize=10, wrap=True)
    return _save(fig, path, dpi=120)


def load_bars_png(load: Mapping[tuple[int, int], torch.Tensor], path: str | Path, variant: str,
                  what: str = "evaluation tokens") -> Path:
    """One bar chart per (layer, step): share of routed assignments per expert, 1/E dashed."""
    layers = sorted({layer for layer, _ in load})
    steps = sorted({step for _, step in load})
    fig, axes = plt.subplots(len(layers), len(steps), figsize=(max(6.5, 3.2 * len(steps) + 1), 2.4 * len(layers) + 1.2),
                             squeeze=False, sharey=True)
    top = max(float(v.max()) for v in load.values()) * 1.15
    for i, layer in enumerate(layers):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            if (layer, step) not in load:
                ax.set_axis_off()  # e.g. more_b's prelude and coda run at step 0 only
                continue
            share = load[(layer, step)]
            E = share.numel()
            ax.bar([f"E{e}" for e in range(E)], share.tolist(), color=[PALETTE[e % len(PALETTE)] for e in range(E)])
            ax.axhline(1 / E, color="black", linestyle="--", linewidth=1)
            ax.set_ylim(0, max(top, 1.2 / E))
            ax.set_title(f"layer {layer}, step {step} ({call_label(layer, step)})", fontsize=9)
            ax.set_xlabel("expert", fontsize=8)
            if j == 0:
                ax.set_ylabel("share of tokens", fontsize=8)
    fig.suptitle(f"Expert load per MoE layer, {variant}\n({what}; dashed = uniform 1/E)", fontsize=10)
    return _save(fig, path, dpi=110)


def curves_png(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, variant: str) -> Path | None:
    """Router entropy and load-balance CV over training from ``{"routing/L0/S1/entropy": [(step, value)], ...}``.

    Returns None (and writes nothing) when the history has no routing curves.
    """
    panels = {"entropy": "router entropy / log E", "cv": "load-balance CV (std / mean)"}
    series = {kind: {k: v for k, v in history.items() if k.startswith("routing/") and k.endswith("/" + kind) and v}
              for kind in panels}
    if not any(series.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (kind, label) in zip(axes, panels.items(), strict=True):
        for name, points in sorted(series[kind].items()):
            layer, step = name.split("/")[1:3]
            pts = sorted(points)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=f"{layer} {step}")
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per MoE layer (L) and step (S)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Routing over training, {variant} (validation batches at each evaluation)", fontsize=11)
    return _save(fig, path, dpi=110)
