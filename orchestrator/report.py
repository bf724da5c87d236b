"""``moe-orch report <sweep run id>``: the comparison table of a sweep, read from MLflow.

The sweep's trials (the runs nested under its parent run) are grouped by the swept keys (the
``sweep.space`` of the parent's ``experiment.yaml``, or ``--by``), and averaged over the rest:
swept keys naming a seed (``train.seed``) are not grouping keys (unless ``--by`` names them), so
trials that differ only by seed are the repeats of one row. Each metric (the sweep's ``metric``, or
``--metric``) is its final value in each trial; a row gives n, mean, the sample standard
deviation (n - 1 in the denominator; 0 for a single trial) and the seeds it averaged (the
swept seed keys' values, else ``train.seed``).

Writes ``report.md``, ``report.csv`` and ``report.png`` (a bar per row and metric, error bars one
standard deviation) into ``--out`` and logs them to the parent run under ``report/``. Trials
that did not finish are left out and counted.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.tracking import Store


class ReportError(ValueError):
    """Bad input to ``moe-orch report`` (exit 2)."""


@dataclass
class Row:
    """One group of trials: its key values, and each metric's values over its trials."""

    group: dict[str, str]
    seeds: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def stats(self, metric: str) -> tuple[int, float, float]:
        """``(n, mean, sample std)`` of ``metric`` (nan mean when no trial reported it)."""
        values = self.values.get(metric, [])
        if not values:
            return 0, math.nan, math.nan
        return len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class Report:
    parent_id: str
    keys: list[str]
    metrics: list[str]
    rows: list[Row]
    left_out: dict[str, int]  # status -> trials not finished

    def label(self, row: Row) -> str:
        return ", ".join(f"{key.split('.')[-1]}={row.group[key]}" for key in self.keys) or "all"


def _sweep_section(store: Store, parent_id: str) -> dict[str, Any]:
    import tempfile

    run = store.run(parent_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = run.download("experiment.yaml", tmp).read_text()
        except Exception as exc:  # MlflowException: no such artifact
            raise ReportError(f"run {parent_id} has no experiment.yaml: not a sweep run of moe-orch") from exc
    return (yaml.safe_load(text) or {}).get("sweep") or {}


def build_report(store: Store, parent_id: str, metrics: list[str] | None = None,
                 by: list[str] | None = None) -> Report:
    """The rows of sweep ``parent_id`` (see the module docstring); ReportError for bad input."""
    try:
        sweep = _sweep_section(store, parent_id)
    except LookupError as exc:
        raise ReportError(str(exc)) from exc
    trials = store.children(parent_id)
    if not trials:
        raise ReportError(f"run {parent_id} has no trials (runs nested under it): is it a sweep's parent run?")
    swept = list((sweep.get("space") or {}).keys())
    keys = by or [k for k in swept if "seed" not in k.split(".")[-1]]  # --by train.seed: one row per seed
    seed_keys = [k for k in swept if k.split(".")[-1] == "seed"] or ["train.seed"]
    if not metrics:
        metric = sweep.get("metric")
        metrics = list(metric) if isinstance(metric, list) else [metric] if metric else []
    if not metrics:
        raise ReportError("no metric: the sweep names none; pass --metric")
    finished = [t for t in trials if t.status == "FINISHED"]
    unknown = [k for k in keys if not any(k in t.params for t in finished)]
    if unknown:
        raise ReportError(f"--by: {', '.join(unknown)} is not a param of the trials "
                          f"(swept: {', '.join(swept) or 'none'})")
    missing = [m for m in metrics if not any(m in t.metrics for t in finished)]
    if missing:
        raise ReportError(f"--metric: no finished trial reported {', '.join(missing)}")
    rows: dict[tuple[str, ...], Row] = {}
    for trial in finished:
        group = {k: trial.params.get(k, "") for k in keys}
        row = rows.setdefault(tuple(group.values()), Row(group))
        row.seeds.append(",".join(trial.params.get(k, "-") for k in seed_keys))
        for m in metrics:
            if m in trial.metrics:
                row.values.setdefault(m, []).append(trial.metrics[m])
    left_out: dict[str, int] = {}
    for trial in trials:
        if trial.status != "FINISHED":
            left_out[trial.status] = left_out.get(trial.status, 0) + 1
    return Report(parent_id, keys, metrics, sorted(rows.values(), key=lambda r: _sort_key(r.group, keys)), left_out)


def _sort_key(group: dict[str, str], keys: list[str]) -> tuple:
    out = []
    for k in keys:
        try:
            out.append((0, float(group[k]), ""))
        except ValueError:
            out.append((1, 0.0, group[k]))
    return tuple(out)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4g}"


def write_report(report: Report, out_dir: Path) -> list[Path]:
    """``report.md``, ``report.csv`` and ``report.png`` in ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header = [*report.keys, "n", "seeds"]
    for m in report.metrics:
        header += [f"{m} mean", f"{m} std"]
    table = []
    for row in report.rows:
        cells = [row.group[k] for k in report.keys]
        n = max((row.stats(m)[0] for m in report.metrics), default=0)
        cells += [str(n), " ".join(row.seeds)]
        for m in report.metrics:
            _, mean, std = row.stats(m)
            cells += [_fmt(mean), _fmt(std)]
        table.append(cells)
    with (out_dir / "report.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(table)
    lines = [f"# Sweep {report.parent_id}", "",
             f"Grouped by {', '.join(report.keys) or 'nothing'}; mean and sample std over the trials of each row "
             "(final values)." + (f" Left out (not finished): {report.left_out}." if report.left_out else ""), "",
             "| " + " | ".join(report.keys + ["n", "seeds"] + [f"{m} (mean ± std)" for m in report.metrics]) + " |",
             "|" + "---|" * (len(report.keys) + 2 + len(report.metrics))]
    for row, cells in zip(report.rows, table, strict=True):
        stats = [f"{_fmt(row.stats(m)[1])} ± {_fmt(row.stats(m)[2])}" for m in report.metrics]
        lines.append("| " + " | ".join(cells[:len(report.keys) + 2] + stats) + " |")
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    _plot(report, out_dir / "report.png")
    return [out_dir / "report.md", out_dir / "report.csv", out_dir / "report.png"]


def _plot(report: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [report.label(row) for row in report.rows]
    fig, axes = plt.subplots(1, len(report.metrics), figsize=(max(4.0, 0.9 * len(labels) + 2) * len(report.metrics),
                                                              4.0), squeeze=False)
    for ax, metric in zip(axes[0], report.metrics, strict=True):
        means = [row.stats(metric)[1] for row in report.rows]
        stds = [row.stats(metric)[2] for row in report.rows]
        ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{metric} (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report_sweep(parent_id: str, tracking_uri: str | None, out: str | Path | None = None,
                 metrics: list[str] | None = None, by: list[str] | None = None) -> tuple[Report, list[Path]]:
    """Build, write (``out``, default ``report-<id prefix>``) and log to the parent run under ``report/``."""
    store = Store.at(tracking_uri)
    report = build_report(store, parent_id, metrics, by)
    files = write_report(report, Path(out or f"report-{parent_id[:8]}"))
    store.run(parent_id).log_artifacts(files[0].parent, "report")
    return report, files
