"""Continual-learning metrics on hand-computed matrices, and the heatmap / lifecycle pictures from synthetic data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainables.dylora.metrics import ContinualMatrix, accuracy_heatmap_png, lifecycle_png


def test_two_phases_by_hand() -> None:
    m = ContinualMatrix([[0.8, 0.1], [0.6, 0.9]], baseline=[0.05, 0.2])
    assert m.avg_final() == pytest.approx(0.75)
    assert m.forgetting() == pytest.approx(0.2)  # 0.8 - 0.6
    assert m.bwt() == pytest.approx(-0.2)  # 0.6 - 0.8
    assert m.fwt() == pytest.approx(-0.1)  # R[0][1] - b[1] = 0.1 - 0.2
    assert m.summary() == pytest.approx({"cl/avg_final": 0.75, "cl/forgetting": 0.2, "cl/bwt": -0.2, "cl/fwt": -0.1})


def test_three_phases_by_hand() -> None:
    m = ContinualMatrix([[0.5, 0.2, 0.1],
                         [0.7, 0.6, 0.3],
                         [0.4, 0.5, 0.8]], baseline=[0.1, 0.1, 0.2])
    assert m.avg_final() == pytest.approx(1.7 / 3)
    # forgetting: skill 0 peaked at 0.7 (after phase 1) -> 0.4; skill 1 peaked at 0.6 -> 0.5; mean (0.3 + 0.1) / 2
    assert m.forgetting() == pytest.approx(0.2)
    assert m.bwt() == pytest.approx(((0.4 - 0.5) + (0.5 - 0.6)) / 2)
    assert m.fwt() == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2)) / 2)


def test_per_example_bwt_and_forgetting_by_hand() -> None:
    from trainables.dylora.evaluation import continual_items

    def row(phase: int, a: list[float], b: list[float]) -> dict:
        return {"phase": phase, "skills": {"a": {"items": {"acc": a, "loss": [1 - x for x in a]}},
                                           "b": {"items": {"acc": b, "loss": [1 - x for x in b]}}}}

    continual = {"phases": [["a", 4], ["b", 4], ["a", 4]],  # a revisit: phase 2 is skill a again
                 "rows": [row(0, [0, 0], [0, 0]), row(1, [0.8, 0.6], [0.1, 0.3]), row(2, [0.4, 0.9], [0.9, 0.5]),
                          row(3, [0.5, 0.5], [0.6, 0.2])]}
    items = {item["doc_id"]: item for item in continual_items(continual)}
    assert sorted(items) == [0, 1, 1000, 1001]  # phases 0 and 1; the last phase has no BWT
    assert items[0]["bwt"] == pytest.approx(0.5 - 0.8) and items[1001]["bwt"] == pytest.approx(0.2 - 0.5)
    # skill a's mean is highest after phase 0 (0.7 against 0.65), so l* = 0 for every a item, even item 1,
    # whose own best was after phase 1: the items' mean is then Chaudhry's forgetting of the means
    assert items[0]["forgetting"] == pytest.approx(0.8 - 0.5) and items[1]["forgetting"] == pytest.approx(0.6 - 0.5)
    assert items[1000]["forgetting"] == pytest.approx(0.9 - 0.6)  # b peaked after phase 1
    assert items[1]["loss_bwt"] == pytest.approx(items[1]["bwt"])  # loss = 1 - acc here, signed alike
    assert continual_items({"phases": [["a", 4]], "rows": [row(0, [0], [0]), row(1, [1], [1])]}) == []


def test_no_forgetting_and_positive_transfer() -> None:
    m = ContinualMatrix([[0.5, 0.3], [0.6, 0.7]], baseline=[0.0, 0.1])
    assert m.forgetting() == pytest.approx(-0.1)  # improved past its best: negative forgetting
    assert m.bwt() == pytest.approx(0.1) and m.fwt() == pytest.approx(0.2)


def test_losses_are_negated_so_signs_keep_their_meaning() -> None:
    m = ContinualMatrix([[1.0, 3.0], [2.0, 0.5]], baseline=[3.5, 3.2], higher_is_better=False)
    assert m.avg_final() == pytest.approx(1.25)  # the mean final loss, in loss units
    assert m.forgetting() == pytest.approx(1.0)  # skill 0's loss rose from 1.0 to 2.0
    assert m.bwt() == pytest.approx(-1.0)
    assert m.fwt() == pytest.approx(0.2)  # phase 0 lowered skill 1's loss from 3.2 to 3.0


def test_single_phase_and_missing_baseline_leave_metrics_out() -> None:
    one = ContinualMatrix([[0.7]], baseline=[0.1])
    assert one.avg_final() == pytest.approx(0.7)
    assert math.isnan(one.forgetting()) and math.isnan(one.bwt()) and math.isnan(one.fwt())
    assert one.summary() == pytest.approx({"cl/avg_final": 0.7})
    no_base = ContinualMatrix([[0.8, 0.1], [0.6, 0.9]])
    assert math.isnan(no_base.fwt()) and set(no_base.summary()) == {"cl/avg_final", "cl/forgetting", "cl/bwt"}


def test_shape_checks_and_json_round_trip() -> None:
    with pytest.raises(ValueError):
        ContinualMatrix([[0.1, 0.2]])
    with pytest.raises(ValueError):
        ContinualMatrix([[0.1]], baseline=[0.1, 0.2])
    m = ContinualMatrix([[0.8, 0.1], [0.6, 0.9]], baseline=[0.05, 0.2], skills=["a", "b"])
    assert ContinualMatrix.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_accuracy_heatmap_png(tmp_path: Path) -> None:
    skills = ["python_basics", "web_requests", "sql"]
    matrices = {
        "naive": ContinualMatrix([[0.5, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.3, 0.7]], baseline=[0.1, 0.1, 0.1]),
        "joint": ContinualMatrix([[0.6, 0.5, 0.6], [0.6, 0.6, 0.6], [0.6, 0.6, 0.7]], baseline=[0.1, 0.1, 0.1]),
        "dylora": ContinualMatrix([[0.5, 0.2, float("nan")], [0.5, 0.6, 0.1], [0.5, 0.6, 0.7]]),
    }
    out = accuracy_heatmap_png(matrices, skills, tmp_path / "heat.png", "answer-token accuracy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(ValueError):
        accuracy_heatmap_png(matrices, skills[:2], tmp_path / "bad.png", "x")


def _synthetic_run() -> tuple[list[dict], dict[str, list[tuple[int, float]]]]:
    events = [
        {"step": 0, "kind": "expert_added", "expert": 0, "seed_end": 30, "detected": False},
        {"step": 0, "kind": "router_mode", "mode": "dense"},
        {"step": 60, "kind": "router_mode", "mode": "sparse"},
        {"step": 100, "kind": "phase_boundary", "skill": "web_requests"},
        {"step": 112, "kind": "expert_added", "expert": 1},
        {"step": 112, "kind": "lr_phase", "expert": 1, "phase": "seeding"},
        {"step": 112, "kind": "router_mode", "mode": "dense"},
        {"step": 140, "kind": "lr_phase", "expert": 1, "phase": "consolidation"},
        {"step": 112, "kind": "lr_phase", "expert": 0, "phase": "frozen"},
        {"step": 170, "kind": "router_mode", "mode": "sparse"},
        {"step": 200, "kind": "phase_boundary", "skill": "sql"},
        {"step": 207, "kind": "expert_added", "expert": 2, "seed_end": 235, "frozen_step": None},
    ]
    detector = [(s, 0.3 + (0.6 if s in range(100, 115) or s in range(200, 210) else 0.0) + 0.02 * (s % 7))
                for s in range(0, 300, 2)]
    curves = {
        "dylora/detector_value": detector,
        "dylora/threshold": [(s, 0.7) for s in range(0, 300, 2)],
        "lr/expert_0": [(s, 1e-3 if s < 30 else 1e-4) for s in range(0, 112, 2)],
        "lr/expert_1": [(s, 1e-3 if s < 140 else 1e-4) for s in range(112, 300, 2)],
        "lr/router": [(s, 5e-4) for s in range(0, 300, 2)],
        "loss": [(0, 2.0)],  # not drawn
    }
    return events, curves


def test_lifecycle_png(tmp_path: Path) -> None:
    events, curves = _synthetic_run()
    out = lifecycle_png(events, curves, tmp_path / "life.png", "DyLoRA-MoE lifecycle (synthetic)")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_lifecycle_png_with_sparse_inputs(tmp_path: Path) -> None:
    out = lifecycle_png([{"step": 0, "kind": "expert_added", "expert": 0}],
                        {"dylora/detector_value": [(0, 0.1), (10, 0.2)]}, tmp_path / "min.png", "minimal")
    assert out.stat().st_size > 5_000
