"""``moe-orch report``: a sweep's trials from a real MLflow store, grouped by the swept keys and
averaged over seeds, written as markdown, CSV and a bar chart, and logged to the sweep's run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.tracking import Store

SWEEP_YAML = """name: more
family: more
sweep:
  metric: val_loss
  mode: min
  space:
    model.variant: {grid: [base, more_a]}
    model.top_k: {choice: [1, 2]}
    train.seed: {grid: [0, 1]}
"""


@pytest.fixture()
def sweep(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = Store.at(uri)
    experiment = store.experiment_id("more")
    parent = store.start_run(experiment, "more/sweep")
    parent.log_text(SWEEP_YAML, "experiment.yaml")
    losses = {("base", 1, 0): 3.0, ("base", 1, 1): 3.2, ("more_a", 1, 0): 2.5, ("more_a", 1, 1): 2.9,
              ("more_a", 2, 0): 2.0}
    for (variant, top_k, seed), loss in losses.items():
        trial = store.start_run(experiment, f"more_{variant}_{top_k}_{seed}", parent=parent)
        trial.log_params({"model.variant": variant, "model.top_k": top_k, "train.seed": seed, "train.lr": 0.001,
                          "evaluate.seed": 7})  # another seed, not swept: not in the seeds column
        trial.log_metrics({"val_loss": loss + 1.0}, step=1)
        trial.log_metrics({"val_loss": loss, "step": 2}, step=2)
        trial.end(ok=True)
    failed = store.start_run(experiment, "more_failed", parent=parent)
    failed.log_params({"model.variant": "base", "model.top_k": 2, "train.seed": 0})
    failed.end(ok=False)
    parent.end(ok=True)
    return uri, parent.run_id


def test_report_groups_by_the_swept_keys_and_averages_over_seeds(sweep: tuple[str, str], tmp_path: Path) -> None:
    uri, parent = sweep
    out = tmp_path / "rep"
    result = CliRunner().invoke(main, ["report", parent, "--tracking-uri", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [(r["model.variant"], r["model.top_k"], r["n"]) for r in rows] == [
        ("base", "1", "2"), ("more_a", "1", "2"), ("more_a", "2", "1")]
    assert float(rows[0]["val_loss mean"]) == pytest.approx(3.1)  # the final values, not step 1's
    assert float(rows[1]["val_loss std"]) == pytest.approx(0.2828, abs=1e-3)  # sample std of 2.5 and 2.9
    assert float(rows[2]["val_loss std"]) == 0.0 and rows[0]["seeds"] == "0 1"
    markdown = (out / "report.md").read_text()
    assert "| base | 1 | 2 | 0 1 | 3.1 ± 0.1414 |" in markdown and "{'FAILED': 1}" in markdown
    assert (out / "report.png").stat().st_size > 1000
    logged = {Path(f.path).name for f in Store.at(uri).run(parent).client.list_artifacts(parent, "report")}
    assert logged == {"report.md", "report.csv", "report.png"}

    result = CliRunner().invoke(main, ["report", parent, "--tracking-uri", uri, "--out", str(out), "--by",
                                       "model.variant", "--metric", "val_loss", "--metric", "step"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [(r["model.variant"], r["n"], r["step mean"]) for r in rows] == [("base", "2", "2"), ("more_a", "3", "2")]

    result = CliRunner().invoke(main, ["report", parent, "--tracking-uri", uri, "--out", str(out), "--by",
                                       "train.seed"])  # asked for: one row per seed
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [(r["train.seed"], r["n"], r["seeds"]) for r in rows] == [("0", "3", "0 0 0"), ("1", "2", "1 1")]


def test_bad_input_exits_2_naming_what(sweep: tuple[str, str]) -> None:
    uri, parent = sweep
    for args, message in ((["--metric", "nope"], "no finished trial reported nope"),
                          (["--by", "model.nope"], "--by: model.nope is not a param"),
                          ([], None)):
        target = "0" * 32 if message is None else parent
        result = CliRunner().invoke(main, ["report", target, "--tracking-uri", uri, *args])
        assert result.exit_code == 2, result.output
        assert (message or f"run {target} not found") in result.output
