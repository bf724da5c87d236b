"""``moe-orch compare``: two sides' per-item outcomes, paired. Hand-made items files check the arithmetic;
two real ``moe-orch evaluate`` runs of the tiny model (fp32 and int8 weights) are compared by run id
through the real MLflow store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import SHARED_DATA

from orchestrator.cli import main
from orchestrator.compare import CompareError, compare


def _items(folder: Path, outcomes: dict[int, float], task: str = "arc_easy") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}_items.jsonl").write_text(
        "".join(json.dumps({"doc_id": d, "acc": v, "acc_norm": 1.0 - v}) + "\n" for d, v in outcomes.items()))
    return str(folder)


def test_a_paired_difference_with_its_interval_and_mcnemar(tmp_path: Path) -> None:
    a = _items(tmp_path / "a", {i: float(i % 2 == 0 or i < 10) for i in range(40)})  # 25 right
    b = _items(tmp_path / "b", {i: float(i % 4 == 0) for i in range(40)})  # 10 right, all also right in a
    result = compare([a], [b])
    assert result.items == 40 and result.mean_a == 25 / 40 and result.mean_b == 10 / 40
    assert result.difference == pytest.approx(15 / 40)
    assert 0 < result.ci_low < result.difference < result.ci_high <= 1
    assert result.ci_a[0] < 25 / 40 < result.ci_a[1] and result.ci_b[0] < 10 / 40 < result.ci_b[1]
    assert result.ci_a[1] - result.ci_a[0] > 0.1  # 40 binary items: an interval of several points
    assert result.mcnemar_p == pytest.approx(2 * 0.5 ** 15)  # 15 discordant items, all for A
    assert "A is higher" in result.text()
    flipped = compare([b], [a], metric="acc_norm")  # 1 - acc: the same gap, the other way round
    assert flipped.difference == pytest.approx(15 / 40)


def test_seeds_are_averaged_per_item_and_only_shared_items_count(tmp_path: Path) -> None:
    a0 = _items(tmp_path / "a0", {0: 1.0, 1: 1.0, 2: 0.0, 3: 1.0})
    _items(tmp_path / "a1" / "evaluation", {0: 0.0, 1: 1.0, 2: 0.0})  # item 3 missing; read from evaluation/
    b = _items(tmp_path / "b", {0: 0.0, 1: 0.0, 2: 1.0, 3: 0.0})
    result = compare([a0, str(tmp_path / "a1")], [b])
    assert result.items == 3 and result.runs_a == 2
    assert result.mean_a == pytest.approx((0.5 + 1.0 + 0.0) / 3) and result.mean_b == pytest.approx(1 / 3)
    assert result.mcnemar_p is None  # averaged outcomes are not 0/1 pairs
    assert result.ci_low <= result.difference <= result.ci_high


def test_bad_input_names_what_is_wrong(tmp_path: Path) -> None:
    a = _items(tmp_path / "a", {0: 1.0})
    b = _items(tmp_path / "b", {1: 1.0})
    with pytest.raises(CompareError, match="no item in common"):
        compare([a], [b])
    with pytest.raises(CompareError, match="--metric: got 'f1'"):
        compare([a], [a], metric="f1")
    with pytest.raises(CompareError, match=r"no hellaswag_items\.jsonl"):
        compare([a], [a], task="hellaswag")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "arc_easy_items.jsonl").write_text('{"doc_id": 0, "acc": 1}\n{"acc": 0}\n')
    with pytest.raises(CompareError, match=r"arc_easy_items\.jsonl:2: expected an object with doc_id"):
        compare([str(broken)], [a])
    out = CliRunner().invoke(main, ["compare", "--a", "nowhere", "--b", a])
    assert out.exit_code == 2 and "neither a folder nor an MLflow run id" in out.output


def test_two_evaluated_runs_compared_by_run_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOE_ORCH_DATA", str(SHARED_DATA))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runner = CliRunner()
    runs = []
    for weights in ("fp32", "int8"):
        out = runner.invoke(main, ["evaluate", "tiny-llama", "--tasks", "arc_easy", "--limit", "12", "--weights",
                                   weights, "--tracking-uri", uri])
        assert out.exit_code == 0, out.output
        assert "arc_easy_items.jsonl" in out.output
        runs.append(re.search(r"MLflow run: ([0-9a-f]{32})", out.output).group(1))
    out = runner.invoke(main, ["compare", "--a", runs[1], "--b", runs[0], "--metric", "acc_norm", "--json",
                               "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["items"] == 12 and result["runs_a"] == result["runs_b"] == 1
    assert result["difference"] == pytest.approx(result["mean_a"] - result["mean_b"])
    assert result["ci_low"] <= result["difference"] <= result["ci_high"]
