"""Continual-learning metrics of a skill stream, and the two pictures that make a DyLoRA-MoE run readable.

``ContinualMatrix`` holds the accuracy matrix of a stream of T skills learned in T phases:
``R[i][j]`` = score on skill j (the skill of phase j) after phase i, and ``baseline[j]`` = score on skill j of
the model before any training. The score we use is the held-out answer-token accuracy (higher is better);
``higher_is_better=False`` accepts a loss instead. The metrics (``summary()`` keys in brackets):

- average final score [``cl/avg_final``]: ``mean_{j=0..T-1} R[T-1][j]``;
- forgetting [``cl/forgetting``] (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning", ECCV):
  ``f_j = max_{l=0..T-2} R[l][j] - R[T-1][j]`` for ``j < T-1``, averaged over those j (>= 0; lower is better);
- backward transfer [``cl/bwt``] (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning",
  NeurIPS): ``1/(T-1) * sum_{j=0..T-2} (R[T-1][j] - R[j][j])`` (negative = forgetting);
- forward transfer [``cl/fwt``] (same paper): ``1/(T-1) * sum_{j=1..T-1} (R[j-1][j] - baseline[j])``: how much
  training on the earlier skills helps a skill before its own phase.

With a loss (``higher_is_better=False``) forgetting, BWT and FWT are computed on the negated matrix, so their signs
keep the meaning above (positive forgetting = worse than the best earlier point, positive BWT/FWT = helped);
``cl/avg_final`` stays in the score's own units (the mean final loss). With T = 1 there is no earlier skill:
forgetting, BWT and FWT are NaN, as is FWT without a baseline, and ``summary()`` leaves NaN metrics out (so a
logger never receives one).

Pictures (matplotlib, Agg backend, ``layout="constrained"``):

- ``accuracy_heatmap_png``: one R heatmap per method (e.g. naive / joint / dylora) side by side, on a shared colour
  scale, each cell annotated;
- ``lifecycle_png``: the expert lifecycle against the optimizer step (expert bars coloured by LR phase, novelty
  events against the true phase boundaries, router mode) above the detector's value and threshold and the
  per-group learning rates. Its inputs are plain data (schema in its docstring), so a run can log them as JSON and
  the picture can be redrawn offline.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

NAN = float("nan")


@dataclass
class ContinualMatrix:
    """``scores[i][j]`` = score on skill j after phase i (T x T); ``baseline[j]`` = score before any training."""

    scores: list[list[float]]
    baseline: list[float] | None = None
    higher_is_better: bool = True
    skills: list[str] = field(default_factory=list)  # optional names of the T skills, for pictures and JSON

    def __post_init__(self) -> None:
        T = len(self.scores)
        if T == 0 or any(len(row) != T for row in self.scores):
            raise ValueError(f"scores must be a non-empty T x T matrix, got rows of {[len(r) for r in self.scores]}")
        if self.baseline is not None and len(self.baseline) != T:
            raise ValueError(f"baseline has {len(self.baseline)} entries for {T} skills")
        if self.skills and len(self.skills) != T:
            raise ValueError(f"{len(self.skills)} skill names for {T} skills")

    @property
    def num_tasks(self) -> int:
        """T: the number of phases (= skills)."""
        return len(self.scores)

    def _oriented(self) -> tuple[list[list[float]], list[float] | None]:
        sign = 1.0 if self.higher_is_better else -1.0
        base = None if self.baseline is None else [sign * b for b in self.baseline]
        return [[sign * v for v in row] for row in self.scores], base

    def avg_final(self) -> float:
        """``mean_j R[T-1][j]``: the mean score over all skills after the last phase (in the score's units)."""
        return sum(self.scores[-1]) / self.num_tasks

    def forgetting(self) -> float:
        """Chaudhry et al. 2018: ``mean_{j<T-1} (max_{l<=T-2} R[l][j] - R[T-1][j])``; NaN when T = 1."""
        T = self.num_tasks
        if T < 2:
            return NAN
        R, _ = self._oriented()
        return sum(max(R[l][j] for l in range(T - 1)) - R[T - 1][j] for j in range(T - 1)) / (T - 1)

    def bwt(self) -> float:
        """GEM backward transfer: ``1/(T-1) * sum_{j<T-1} (R[T-1][j] - R[j][j])``; NaN when T = 1."""
        T = self.num_tasks
        if T < 2:
            return NAN
        R, _ = self._oriented()
        return sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1)

    def fwt(self) -> float:
        """GEM forward transfer: ``1/(T-1) * sum_{j>=1} (R[j-1][j] - baseline[j])``; NaN when T = 1 or no baseline."""
        T = self.num_tasks
        R, base = self._oriented()
        if T < 2 or base is None:
            return NAN
        return sum(R[j - 1][j] - base[j] for j in range(1, T)) / (T - 1)

    def summary(self) -> dict[str, float]:
        """``cl/avg_final``, ``cl/forgetting``, ``cl/bwt``, ``cl/fwt``, leaving out the undefined (NaN) ones."""
        values = {"cl/avg_final": self.avg_final(), "cl/forgetting": self.forgetting(), "cl/bwt": self.bwt(),
                  "cl/fwt": self.fwt()}
        return {k: v for k, v in values.items() if not math.isnan(v)}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_dict`` reads it back)."""
        return {"scores": self.scores, "baseline": self.baseline, "higher_is_better": self.higher_is_better,
                "skills": self.skills}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinualMatrix:
        """The matrix ``to_dict`` wrote."""
        return cls([list(map(float, row)) for row in data["scores"]],
                   None if data.get("baseline") is None else list(map(float, data["baseline"])),
                   bool(data.get("higher_is_better", True)), list(data.get("skills") or []))


def accuracy_heatmap_png(matrices: Mapping[str, ContinualMatrix], skills: Sequence[str], path: str | Path,
                         title: str) -> Path:
    """One heatmap per method (rows: after phase i, columns: skill j), annotated, on a shared colour scale.

    ``matrices`` maps a method name (e.g. ``naive``, ``joint``, ``dylora``) to its matrix; ``skills`` names the
    T skills in phase order. NaN cells are left blank. Returns ``path``.
    """
    if not matrices:
        raise ValueError("no matrices to draw")
    T = len(skills)
    for name, m in matrices.items():
        if m.num_tasks != T:
            raise ValueError(f"{name}: {m.num_tasks} tasks for {T} skill names")
    values = [v for m in matrices.values() for row in m.scores for v in row if not math.isnan(v)]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    if vmax - vmin < 1e-9:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(1.0 + (1.1 * T + 1.6) * n, 1.1 * T + 1.8), layout="constrained",
                             squeeze=False)
    image = None
    for k, (ax, (name, m)) in enumerate(zip(axes[0], matrices.items(), strict=True)):
        image = ax.imshow(m.scores, cmap="viridis", vmin=vmin, vmax=vmax, aspect="equal")
        for i, row in enumerate(m.scores):
            for j, v in enumerate(row):
                if math.isnan(v):
                    continue
                shade = (v - vmin) / (vmax - vmin)
                ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=9,
                        color="black" if shade > 0.55 else "white")
        ax.set_xticks(range(T), list(skills), rotation=30, ha="right")
        ax.set_yticks(range(T), [f"after phase {i + 1} ({s})" for i, s in enumerate(skills)] if k == 0 else [])
        summary = m.summary()
        sub = ", ".join(f"{k[3:]} {v:+.3f}" for k, v in summary.items() if k != "cl/avg_final")
        ax.set_title(f"{name}\nfinal {m.avg_final():.3f}" + (f"\n{sub}" if sub else ""), fontsize=10)
        ax.set_xlabel("evaluated skill")
    axes[0][0].set_ylabel("model after phase")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.8, label="score")
    fig.suptitle(textwrap.fill(title, 70))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


LR_PHASE_COLORS = {"seeding": "tab:orange", "consolidation": "tab:blue"}
ROUTER_COLORS = {"dense": "tab:purple", "sparse": "tab:green"}


def _expert_bars(events: Sequence[Mapping[str, Any]], last_step: int) -> list[dict[str, Any]]:
    """Per expert: birth step, seed_end (end of the high-LR seeding), frozen step, from the event list."""
    experts: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["kind"] == "expert_added":
            experts[int(e["expert"])] = {"expert": int(e["expert"]), "birth": int(e["step"]),
                                         "seed_end": e.get("seed_end"), "frozen": e.get("frozen_step")}
    for e in events:
        if e["kind"] == "lr_phase" and int(e["expert"]) in experts:
            bar = experts[int(e["expert"])]
            if e.get("phase") == "consolidation" and bar["seed_end"] is None:
                bar["seed_end"] = int(e["step"])
            if e.get("phase") == "frozen" and bar["frozen"] is None:
                bar["frozen"] = int(e["step"])
    for bar in experts.values():
        bar["end"] = last_step
    return [experts[k] for k in sorted(experts)]


def lifecycle_png(events: Sequence[Mapping[str, Any]], curves: Mapping[str, Sequence[tuple[int, float]]],
                  path: str | Path, title: str) -> Path:
    """The expert lifecycle of one run against the optimizer step. Returns ``path``.

    ``events`` (any order), each a dict with ``"step"`` (optimizer step, int) and ``"kind"``:

    - ``"expert_added"``: ``"expert"`` (int id); optional ``"seed_end"`` (step where its high-LR seeding ends),
      ``"frozen_step"`` (step from which it no longer trains), ``"detected"`` (bool: added by the novelty detector,
      as opposed to the initial expert; default True for every expert born after step 0);
    - ``"lr_phase"``: ``"expert"`` and ``"phase"`` in ``seeding`` / ``consolidation`` / ``frozen`` (an alternative
      to ``seed_end`` / ``frozen_step``);
    - ``"router_mode"``: ``"mode"`` in ``dense`` / ``sparse``, the mode from this step on;
    - ``"phase_boundary"``: a true skill change (``"skill"`` optional: the new skill's name).

    ``curves`` maps a name to ``[(step, value), ...]``: ``"dylora/detector_value"`` and ``"dylora/threshold"`` go
    to the detector panel, every ``"lr/<group>"`` to the learning-rate panel (log scale); other names are ignored.

    Top panel: one bar per expert from its birth, orange while seeding (high LR), blue while consolidating, hatched
    grey once frozen; a router-mode strip (purple dense, green sparse) under the bars; solid red lines at detected
    novelty (expert added after step 0), dashed black lines at the true phase boundaries, so the gap between a dashed
    line and the next red one is the detection delay.
    """
    steps = [int(e["step"]) for e in events] + [int(s) for pts in curves.values() for s, _ in pts]
    last_step = max(steps, default=1) or 1
    lr_curves = {k: v for k, v in curves.items() if k.startswith("lr/") and v}
    n_panels = 2 + bool(lr_curves)
    fig, axes = plt.subplots(n_panels, 1, figsize=(11, 3.2 + 2.4 * (n_panels - 1)), sharex=True, layout="constrained",
                             gridspec_kw={"height_ratios": [1.4] + [1] * (n_panels - 1)})
    top, det = axes[0], axes[1]

    bars = _expert_bars(events, last_step)
    for row, bar in enumerate(bars):
        seed_end = bar["seed_end"] if bar["seed_end"] is not None else bar["end"]
        frozen = bar["frozen"] if bar["frozen"] is not None else bar["end"]
        seed_end = min(max(seed_end, bar["birth"]), frozen)
        top.broken_barh([(bar["birth"], seed_end - bar["birth"])], (row - 0.35, 0.7),
                        facecolors=LR_PHASE_COLORS["seeding"])
        top.broken_barh([(seed_end, frozen - seed_end)], (row - 0.35, 0.7), facecolors=LR_PHASE_COLORS["consolidation"])
        if bar["frozen"] is not None:
            top.broken_barh([(frozen, bar["end"] - frozen)], (row - 0.35, 0.7), facecolors="lightgrey",
                            edgecolor="grey", hatch="//")
    router = sorted((int(e["step"]), e["mode"]) for e in events if e["kind"] == "router_mode")
    strip_y = -1.0
    for k, (start, mode) in enumerate(router):
        end = router[k + 1][0] if k + 1 < len(router) else last_step
        top.broken_barh([(start, end - start)], (strip_y - 0.3, 0.6), facecolors=ROUTER_COLORS.get(mode, "grey"))
    top.set_yticks([strip_y] + list(range(len(bars))), ["router"] + [f"expert {b['expert']}" for b in bars])
    top.set_ylim(strip_y - 0.6, max(len(bars), 1) - 0.4)

    detected = [int(e["step"]) for e in events if e["kind"] == "expert_added"
                and e.get("detected", int(e["step"]) > 0)]
    boundaries = [(int(e["step"]), e.get("skill")) for e in events if e["kind"] == "phase_boundary"]
    for ax in axes:
        for s in detected:
            ax.axvline(s, color="tab:red", lw=1.4)
        for s, _ in boundaries:
            ax.axvline(s, color="black", ls="--", lw=1.1)
    for s, skill in boundaries:
        if skill:
            top.annotate(str(skill), (s, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                         textcoords="offset points", fontsize=8)
    legend = [Patch(color=LR_PHASE_COLORS["seeding"], label="seeding (high LR)"),
              Patch(color=LR_PHASE_COLORS["consolidation"], label="consolidation (low LR)"),
              Patch(facecolor="lightgrey", edgecolor="grey", hatch="//", label="frozen"),
              Patch(color=ROUTER_COLORS["dense"], label="router dense"),
              Patch(color=ROUTER_COLORS["sparse"], label="router sparse"),
              plt.Line2D([], [], color="tab:red", label="novelty detected"),
              plt.Line2D([], [], color="black", ls="--", label="true phase boundary")]
    top.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    top.set_title("experts")

    drawn, values = False, []
    for name, style in (("dylora/detector_value", {"color": "tab:blue", "marker": ".", "label": "detector value"}),
                        ("dylora/threshold", {"color": "tab:red", "ls": ":", "label": "threshold"})):
        pts = curves.get(name) or []
        if pts:
            det.plot([s for s, _ in pts], [v for _, v in pts], **style)
            values += [v for _, v in pts]
            drawn = True
    if values and min(values) > 0 and max(values) / min(values) > 50:
        det.set_yscale("log")  # criteria of different scales (a distance of 0.001, an entropy of 0.3) stay readable
    det.set_ylabel("novelty detector")
    if drawn:
        det.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if lr_curves:
        lr_ax = axes[2]
        for name, pts in sorted(lr_curves.items()):
            lr_ax.plot([s for s, _ in pts], [v for _, v in pts], label=name[3:])
        if all(v > 0 for pts in lr_curves.values() for _, v in pts):
            lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate")
        lr_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("optimizer step")
    axes[-1].set_xlim(0, last_step)
    fig.suptitle(textwrap.fill(title, 70))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
