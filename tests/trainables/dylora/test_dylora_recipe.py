"""The DyLoRA-MoE recipe driven by a minimal copy of the training loop, without Ray: what each method
does with the stream (naive and joint keep one expert, dylora grows its pool at a detected boundary),
and what its checkpoint carries for the evaluator."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from support import SHARED_DATA

from orchestrator.config import load_experiment
from trainables.dylora.recipe import DyLoRARecipe
from trainables.training import WorkerInfo
from trainables.training.manifest import read_manifest
from trainables.training.optim import build_optimizer

REPO = Path(__file__).resolve().parents[3]
TINY_YAML = REPO / "experiments" / "dylora_tiny.yaml"
pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")


def _drive(method: str, tmp_path: Path, *overrides: str) -> tuple[DyLoRARecipe, dict]:
    """Run the tiny stream with ``method`` the way ``trainables.training.loop`` does; the last metrics."""
    os.environ.setdefault("MOE_ORCH_DATA", str(SHARED_DATA))
    exp = load_experiment(TINY_YAML, [f"model.method={method}", "evaluate.mbpp_limit=1",
                                      "evaluate.humaneval_limit=0", *overrides])
    recipe = DyLoRARecipe(exp, WorkerInfo())
    recipe.setup()
    torch.manual_seed(exp.train.seed)
    model = recipe.build_model(None)
    optimizer = build_optimizer(recipe.param_groups(model), exp.train.lr, recipe.adam_betas)
    scheduler = recipe.build_scheduler(optimizer)
    batches = recipe.batches(torch.Generator().manual_seed(0))
    metrics: dict = {}
    for step in range(1, exp.train.max_steps + 1):
        recipe.forward(model, next(batches)).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        recipe.step = step
        recipe.on_step_end(model, step)
        if step % exp.train.eval_every == 0:
            metrics = recipe.evaluate(model)
            model.train()
    recipe.save_model(model, tmp_path / "model", {"step": exp.train.max_steps})
    return recipe, metrics


@pytest.mark.parametrize("method", ["naive", "joint"])
def test_baselines_keep_one_expert(method: str, tmp_path: Path) -> None:
    recipe, metrics = _drive(method, tmp_path, "model.loss_z_threshold=0.01")
    assert recipe.detector is None and recipe.manager.num_active == 1
    assert metrics["dylora/num_experts"] == 1 and metrics["registry/phase"] == 2
    assert metrics["lr/expert_0"] > 0  # the one expert keeps learning through both phases


def test_dylora_grows_at_the_boundary_and_checkpoints_everything(tmp_path: Path) -> None:
    recipe, metrics = _drive("dylora", tmp_path, "model.loss_z_threshold=0.01", "model.max_experts=2")
    assert recipe.manager.num_active == 2  # the pool is full after one detection: no more
    added = [e for e in recipe.events if e["kind"] == "expert_added" and e["detected"]]
    assert len(added) == 1 and added[0]["criterion"] == "loss"
    assert metrics["lr/expert_0"] == 0.0 and metrics["lr/expert_1"] > 0  # old expert frozen, new one learning
    assert metrics["dylora/false_novelty"] + (metrics["dylora/detection_delay_1"] >= 0) == 1

    manifest = read_manifest(tmp_path / "model")
    continual = manifest.metadata["continual"]
    assert [r["phase"] for r in continual["rows"]] == [0, 1, 2] and continual["method"] == "dylora"
    assert set(continual["rows"][0]["skills"]) == {"python_basics", "web_requests"}
    assert "mbpp/pass_at_1" in continual["rows"][2]["code"]
    assert {"dylora/train_loss", "dylora/detector_value", "lr/expert_1"} <= set(continual["curves"])
    assert manifest.extra["detector"]["decisions"] and manifest.extra["pool"]["experts"][0]["frozen_step"]


def test_the_evaluator_reads_the_matrix_and_can_rescore_pass_at_k(tmp_path: Path) -> None:
    from orchestrator.contract import EvalRequest
    from trainables.dylora.evaluation import evaluate_checkpoint
    from trainables.dylora.family import CodeEvalSection

    _drive("dylora", tmp_path, "model.loss_z_threshold=0.01")
    settings = CodeEvalSection(rescore=True, mbpp_limit=2, humaneval_limit=0, n_samples=3, k=[1, 3],
                               max_new_tokens=8)
    out = tmp_path / "evaluation"
    out.mkdir()
    lines: list[str] = []
    metrics = evaluate_checkpoint(EvalRequest(tmp_path / "model", settings, out, str(SHARED_DATA), log=lines.append))
    assert {"cl/avg_final", "cl/bwt", "cl/forgetting", "cl/fwt", "dylora/false_novelty"} <= set(metrics)
    assert metrics["eval/mbpp/pass_at_3"] == 0.0 and metrics["eval/mbpp/n_problems"] == 2  # random model: 0
    assert {p.name for p in out.iterdir()} == {"accuracy_matrix.png", "expert_lifecycle.png", "continual.json",
                                               "cl_items.jsonl"}
    items = [json.loads(line) for line in (out / "cl_items.jsonl").read_text().splitlines()]
    row0 = json.loads((out / "continual.json").read_text())["rows"][0]
    heldout = len(row0["skills"]["python_basics"]["items"]["acc"])
    assert [item["doc_id"] for item in items] == list(range(heldout))  # phase 0's skill only: the last has no BWT
    assert all(item["forgetting"] == pytest.approx(-item["bwt"]) for item in items)  # two phases: l* = 0
    assert any(line.startswith("after phase 2") for line in lines)
