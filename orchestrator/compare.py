"""Two models on the same items: ``moe-orch compare --a RUN ... --b RUN ...``.

An evaluation that scores items one by one writes ``<task>_items.jsonl`` beside its metrics (one
``{"doc_id", <metric>: value, ...}`` per item; the LM families' lm-eval scores do). ``compare`` reads
those files for the runs of side A and of side B (MLflow run ids, whose ``evaluation/`` artifact
holds them, or local folders), keeps the items every run scored, averages each item over a side's
runs (seeds), and reports mean(A) - mean(B) with a 95 % paired bootstrap interval over the items
(``trainables.significance``: the items are resampled, each keeping its A and B outcomes), and each
side's mean with its own interval. With one run a side and 0/1 outcomes it adds the exact McNemar p-value.

DyLoRA-MoE's evaluation writes ``cl_items.jsonl`` (task ``cl``): each held-out example's share of
backward transfer and forgetting (``--metric bwt``, ``forgetting``, ``loss_bwt``, ``loss_forgetting``),
so a side's own interval is that of its BWT, and A - B that of the difference in BWT.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from orchestrator.checkpoints import RUN_ID_RE
from orchestrator.evaluate import ARTIFACT_DIR
from trainables.significance import mcnemar_p, paired_bootstrap_ci


class CompareError(ValueError):
    """A run or folder without the items file, or two sides with no item in common."""


@dataclass
class Comparison:
    """mean(A) - mean(B) over ``items`` shared items, with its 95 % paired bootstrap interval."""

    task: str
    metric: str
    items: int
    runs_a: int
    runs_b: int
    mean_a: float
    mean_b: float
    ci_a: tuple[float, float]  # 95 % bootstrap interval of mean(A) over the items
    ci_b: tuple[float, float]
    difference: float
    ci_low: float
    ci_high: float
    mcnemar_p: float | None  # one run a side, 0/1 outcomes only

    def text(self) -> str:
        verdict = ("A is higher" if self.ci_low > 0 else "B is higher" if self.ci_high < 0
                   else "no difference beyond the interval")
        lines = [f"{self.task}/{self.metric} on {self.items} items in common "
                 f"(A: {self.runs_a} run(s), B: {self.runs_b}; a side's runs averaged per item)",
                 f"  A {self.mean_a:.4f} [{self.ci_a[0]:+.4f}, {self.ci_a[1]:+.4f}]   "
                 f"B {self.mean_b:.4f} [{self.ci_b[0]:+.4f}, {self.ci_b[1]:+.4f}]",
                 f"  A - B {self.difference:+.4f}, 95 % paired bootstrap interval [{self.ci_low:+.4f}, "
                 f"{self.ci_high:+.4f}]: {verdict}"]
        if self.mcnemar_p is not None:
            lines.append(f"  McNemar exact p = {self.mcnemar_p:.4f}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def read_items(target: str, task: str, tracking_uri: str | None, download_dir: Path) -> dict[int, dict[str, float]]:
    """``{doc_id: {metric: value}}`` from ``target``: a folder holding ``<task>_items.jsonl`` (itself or its
    ``evaluation/``), or an MLflow run id whose ``evaluation/`` artifact holds it."""
    name = f"{task}_items.jsonl"
    if Path(target).exists():
        candidates = [Path(target) / name, Path(target) / ARTIFACT_DIR / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise CompareError(f"{target}: no {name} in it or in its {ARTIFACT_DIR}/ (evaluate it first)")
    elif RUN_ID_RE.match(target):
        from orchestrator.tracking import Store  # mlflow: only for a run id

        try:
            path = Store.at(tracking_uri).run(target).download(f"{ARTIFACT_DIR}/{name}", download_dir / target)
        except Exception as exc:  # mlflow's MlflowException: no such run or artifact
            raise CompareError(f"run {target}: no {ARTIFACT_DIR}/{name} artifact ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    else:
        raise CompareError(f"{target}: neither a folder nor an MLflow run id (32 hex digits)")
    items = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                items[int(row.pop("doc_id"))] = {k: float(v) for k, v in row.items()}
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise CompareError(f"{path}:{number}: expected an object with doc_id and numbers ({exc})") from exc
    if not items:
        raise CompareError(f"{path}: no items")
    return items


def compare(side_a: list[str], side_b: list[str], task: str = "arc_easy", metric: str = "acc",
            tracking_uri: str | None = None, resamples: int = 2000, seed: int = 0) -> Comparison:
    """mean(A) - mean(B) on the items every run of both sides scored (module docstring)."""
    if not side_a or not side_b:
        raise CompareError("expected at least one run on each side (--a and --b)")
    with tempfile.TemporaryDirectory(prefix="moe-orch-compare-") as tmp:
        runs = {side: [read_items(t, task, tracking_uri, Path(tmp)) for t in targets]
                for side, targets in (("a", side_a), ("b", side_b))}
    every = [items for side in runs.values() for items in side]
    missing = [t for t, items in zip([*side_a, *side_b], every, strict=True)
               if any(metric not in row for row in items.values())]
    if missing:
        raise CompareError(f"--metric: got {metric!r}, expected one the items files hold "
                           f"({', '.join(sorted(next(iter(every[0].values()))))}); missing in {', '.join(missing)}")
    shared = sorted(set.intersection(*(set(items) for items in every)))
    if not shared:
        raise CompareError("the runs have no item in common (were they scored on the same task and limit?)")

    def side_means(side: list[dict[int, dict[str, float]]]) -> torch.Tensor:  # (items,) a side's mean per item
        return torch.tensor([[items[d][metric] for d in shared] for items in side], dtype=torch.float64).mean(0)

    a, b = side_means(runs["a"]), side_means(runs["b"])
    low, high = paired_bootstrap_ci(a, b, resamples=resamples, seed=seed)
    zeros = torch.zeros_like(a)  # a side's own interval: mean(side) - 0, the items resampled alike
    ci_a = paired_bootstrap_ci(a, zeros, resamples=resamples, seed=seed)
    ci_b = paired_bootstrap_ci(b, zeros, resamples=resamples, seed=seed)
    binary = len(side_a) == len(side_b) == 1 and all(((x == 0) | (x == 1)).all() for x in (a, b))
    return Comparison(task, metric, len(shared), len(side_a), len(side_b), float(a.mean()), float(b.mean()),
                      ci_a, ci_b, float((a - b).mean()), low, high, mcnemar_p(a.bool(), b.bool()) if binary else None)
