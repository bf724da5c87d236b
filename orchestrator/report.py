"""A sweep's results: the summary ``moe-orch sweep`` writes at its end, and ``moe-orch report``.

The end of a sweep (``write_summary``, called by ``orchestrator/sweep.py`` once Tune returns): one row
per trial (swept values, metrics, status, timings, MLflow run id) into ``summary.csv`` in the sweep
folder, the Optuna plots (parallel coordinates, parameter importance, the Pareto front with several
metrics) into ``plots/``, both logged to the sweep's parent run with the best trial's params and
metrics, and the fixed-width table the command prints.

``moe-orch report <sweep run id>`` (``report_sweep``): the comparison table of a sweep, read from
MLflow, at any time after it. The sweep's trials (the runs nested under its parent run) are grouped
by the swept keys (the ``sweep.space`` of the parent's ``experiment.yaml``, or ``--by``), and
averaged over the rest: swept keys naming a seed (``train.seed``) are not grouping keys (unless
``--by`` names them), so trials that differ only by seed are the repeats of one row. Each metric
(the sweep's ``metric``, or ``--metric``) is its final value in each trial; a row gives n, mean, the
sample standard deviation (n - 1 in the denominator; 0 for a single trial) and the seeds it averaged
(the swept seed keys' values, else ``train.seed``). It writes ``report.md``, ``report.csv`` and
``report.png`` (a bar per row and metric, error bars one standard deviation) into ``--out`` and logs
them to the parent run under ``report/``. Trials that did not finish are left out and counted.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.tracking import Store

if TYPE_CHECKING:
    from orchestrator.experiment import Experiment
    from orchestrator.storage import Storage
    from orchestrator.tracking import Run

CHILD_ID_FILE, TIMING_FILE = "mlflow_run_id", "timing.json"  # a trial folder's files (sweep.py writes them)


# -- the end of a sweep: summary rows, summary.csv, the table, the Optuna plots -------------------------


def expected_reports(exp: Experiment) -> int:
    """How many reports a trial that runs to the end makes."""
    return math.ceil(exp.train.max_steps / exp.train.eval_every)


def trial_status(error: bool, reports: int, expected: int, finished: bool) -> str:
    """``ERROR`` (it raised), ``STOPPED`` (cut short by ASHA or an interruption: fewer reports than a
    full run and no ``timing.json``, which only a driver that returned writes) or ``TERMINATED``."""
    if error:
        return "ERROR"
    if reports < expected and not finished:
        return "STOPPED"
    return "TERMINATED"


def trial_row(exp: Experiment, name: str, config: dict[str, Any], metrics: dict[str, Any], error: bool,
              timing: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """One summary row: name, swept values, metric(s), status, wall/train/overhead seconds, run id.

    ``metrics`` is the trial's last Tune result, ``timing`` its ``timing.json`` (empty if the
    driver did not return).
    """
    train_time = metrics.get("train_time_s")
    wall = timing.get("wall_time_s") or metrics.get("time_total_s")
    reports = int(metrics.get("training_iteration", 0) or 0)
    row = {"trial": name}
    row.update({key: config.get(key) for key in exp.sweep.space})
    row.update({m: metrics.get(m) for m in exp.metrics})
    row.update({
        "status": trial_status(error, reports, expected_reports(exp), bool(timing)),
        "reports": reports, "step": metrics.get("step"),
        "wall_time_s": _round(wall), "train_time_s": _round(train_time),
        "overhead_s": round(wall - train_time, 2) if wall is not None and train_time is not None else None,
        "startup_s": _round(timing.get("startup_s")), "teardown_s": _round(timing.get("teardown_s")),
        "run_id": run_id,
    })
    return row


def trial_rows(exp: Experiment, grid: Any, sweep_dir: Storage) -> list[dict[str, Any]]:
    """``trial_row`` for every trial of Tune's ``ResultGrid``, sorted by name."""
    rows = []
    for result in grid:
        name = Path(result.path).name
        timing_file, run_file = (sweep_dir / name).file(TIMING_FILE), (sweep_dir / name).file(CHILD_ID_FILE)
        rows.append(trial_row(
            exp, name, dict(result.config or {}), dict(result.metrics or {}), result.error is not None,
            json.loads(timing_file.read_text()) if timing_file.exists() else {},
            run_file.read_text().strip() if run_file.exists() else None))
    return sorted(rows, key=lambda r: r["trial"])


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """The summary table as CSV."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width text table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def optuna_study(exp: Experiment, rows: list[dict[str, Any]]) -> Any:
    """An Optuna study rebuilt from the trial rows (completed trials with all metrics)."""
    import optuna

    distributions = {}
    for dim in exp.dims:
        if dim.kind in ("choice", "grid"):
            distributions[dim.key] = optuna.distributions.CategoricalDistribution(list(dim.args))
        elif dim.kind == "randint":
            distributions[dim.key] = optuna.distributions.IntDistribution(*dim.args)
        else:
            distributions[dim.key] = optuna.distributions.FloatDistribution(*dim.args, log=dim.kind == "loguniform")
    directions = ["minimize" if m == "min" else "maximize" for m in exp.modes]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=directions, study_name=exp.name)
    for row in rows:
        values = [row.get(m) for m in exp.metrics]
        if any(v is None for v in values) or row["status"] == "ERROR":
            continue
        params = {k: row[k] for k in distributions if row.get(k) is not None}
        if len(params) != len(distributions):
            continue
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, values=values,
            user_attrs={"trial": row["trial"], "status": row["status"]}))
    return study


def write_plots(exp: Experiment, study: Any, out: Path) -> list[Path]:
    """Parallel coordinates + parameter importance (+ Pareto front with several metrics) as HTML."""
    import optuna.visualization as vis

    out.mkdir(parents=True, exist_ok=True)
    target = (lambda t: t.values[0]) if len(exp.metrics) > 1 else None
    name = exp.metrics[0]
    plots = {
        "parallel_coordinate.html": lambda: vis.plot_parallel_coordinate(study, target=target, target_name=name),
        "param_importances.html": lambda: vis.plot_param_importances(study, target=target, target_name=name),
    }
    if len(exp.metrics) > 1:
        plots["pareto_front.html"] = lambda: vis.plot_pareto_front(study, target_names=exp.metrics)
    written = []
    for filename, make in plots.items():
        try:
            # plotly.js embedded (about 4 MB a file): the plots open offline and inside the MLflow UI
            make().write_html(str(out / filename), include_plotlyjs=True)
            written.append(out / filename)
        except Exception as exc:  # too few trials, constant params...: a plot is never worth failing a sweep
            print(f"plot {filename} skipped: {exc}")
    return written


def write_summary(exp: Experiment, grid: Any, rows: list[dict[str, Any]], sweep_dir: Storage, parent: Run,
                  wall: float) -> dict[str, Any]:
    """The results of a finished sweep (``rows``: ``trial_rows``): ``summary.csv`` and ``plots/`` into
    ``sweep_dir`` and the parent run, the best trial's params and metrics and the sweep's totals into the
    parent run (which the caller closes). Returns what ``run_sweep`` returns: the rows, a printable table,
    the best row, the parent run id, where the CSV and plots are, the wall time."""
    local = sweep_dir.local_path or Path(tempfile.mkdtemp(prefix="moe-orch-sweep-"))  # written here, then stored
    try:
        return _write_summary(exp, grid, rows, sweep_dir, local, parent, wall)
    finally:
        if sweep_dir.local_path is None:
            sweep_dir.upload(local)
            shutil.rmtree(local, ignore_errors=True)


def _write_summary(exp: Experiment, grid: Any, rows: list[dict[str, Any]], sweep_dir: Storage, local: Path,
                   parent: Run, wall: float) -> dict[str, Any]:
    csv_path = write_csv(rows, local / "summary.csv")
    parent.log_artifact(csv_path)
    plots: list[Path] = []
    if rows:
        try:
            plots = write_plots(exp, optuna_study(exp, rows), local / "plots")
        except Exception as exc:
            print(f"plots skipped: {exc}")
    for plot in plots:
        parent.log_artifact(plot, "plots")

    metric, mode = exp.metrics[0], exp.modes[0]
    scored = [r for r in rows if r.get(metric) is not None and r["status"] != "ERROR"]
    best = (min if mode == "min" else max)(scored, key=lambda r: r[metric]) if scored else None
    if best is not None:
        parent.log_params({"best": {"trial": best["trial"], **{k: best[k] for k in exp.sweep.space}}})
        best_result = next((r for r in grid if Path(r.path).name == best["trial"]), None)
        best_metrics = dict(best_result.metrics or {}) if best_result is not None else {}
        family = exp.family_spec  # the family's own scalars, not Tune's bookkeeping or per-layer keys
        parent.log_metrics({f"best_{k}": v for k, v in best_metrics.items()
                            if k in family.metrics or k in family.eval_metrics}, step=0)
    finished = sum(r["status"] != "ERROR" for r in rows)
    parent.log_metrics({"sweep_wall_time_s": wall, "trials": len(rows), "trials_ok": finished})

    columns = ["trial", *exp.sweep.space, *exp.metrics, "status", "step", "wall_time_s", "train_time_s", "overhead_s"]
    table = format_table(rows, columns)
    if best is not None:
        table += f"\nbest: {best['trial']} {metric}={best[metric]:.4f}"
    return {"interrupted": False, "rows": rows, "table": table, "best": best, "parent_run_id": parent.run_id,
            "csv": str(sweep_dir / "summary.csv"), "plots": [str(sweep_dir / "plots" / p.name) for p in plots],
            "wall_time_s": wall}


# -- moe-orch report: a sweep's trials from MLflow, grouped and averaged over seeds ---------------------


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
