"""``moe-orch predict``: a tiny trained Ensemble MoE, saved as a checkpoint directory and as an MLflow run's
checkpoint artifact, classifies texts from --text and --file (plain and --json); bad input exits 2 with
a message saying what is wrong."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from orchestrator.cli import main
from trainables.ensemble.checkpoint import LABEL_NAMES, load_checkpoint, save_checkpoint
from trainables.ensemble.config import EnsembleConfig
from trainables.ensemble.fit import batches, build_optimizer, train_step
from trainables.ensemble.model import EnsembleMoE
from trainables.training.manifest import Manifest, write_manifest

TEXTS = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés",
         "unflinchingly bleak and desperate"]


@pytest.fixture(scope="module")
def checkpoint(tiny_experts: list[dict[str, Any]], sst2: dict[str, Any],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny top-1 Ensemble MoE trained for 4 steps, saved as ``moe-orch train`` saves one."""
    torch.manual_seed(0)
    model = EnsembleMoE.build(EnsembleConfig(experts=tiny_experts, max_length=32, top_k=1))
    optimizer = build_optimizer(model, 1e-3, 0.0)
    stream = batches(sst2["train"], 16, torch.Generator().manual_seed(0))
    model.train()
    for _ in range(4):
        train_step(model, *next(stream), optimizer)
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("predict") / "ckpt", {"step": 4})


@pytest.fixture(scope="module")
def logged_run(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """``(run id, tracking uri)`` of an MLflow run holding ``checkpoint`` as its ``checkpoint`` artifact."""
    from orchestrator.tracking import Store

    store = Store.at(f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    run = store.start_run(store.experiment_id("predict-test"), run_name="ensemble-tiny/train")
    run.log_artifacts(checkpoint, "checkpoint")
    run.end(ok=True)
    return run.run_id, store.uri


def predict(*args: str) -> Any:
    return CliRunner().invoke(main, ["predict", *args])


def check(rows: list[dict[str, Any]], texts: list[str], experts: list[str]) -> None:
    """One well-formed prediction per text, in order."""
    assert [r["text"] for r in rows] == texts
    for r in rows:
        assert r["label"] in LABEL_NAMES and list(r["probabilities"]) == LABEL_NAMES
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(r["gate_weights"]) == experts
        assert sum(r["gate_weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert sorted(r["gate_weights"].values())[:-1] == [0.0]  # top-1: the other expert gets nothing


def test_texts_from_a_checkpoint_directory(checkpoint: Path, tiny_experts: list[dict[str, Any]]) -> None:
    result = predict(str(checkpoint), "--text", TEXTS[0], "--text", TEXTS[1])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"[1] {TEXTS[0]}" and lines[2] == f"[2] {TEXTS[1]}" and len(lines) == 4
    for line in (lines[1], lines[3]):
        label, rest = line.split(maxsplit=1)
        assert label in LABEL_NAMES and "gate: bert_wp " in rest and ", roberta_bpe " in rest

    result = predict(str(checkpoint), "--json", *[a for t in TEXTS for a in ("--text", t)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    check(rows, TEXTS, [e["name"] for e in tiny_experts])
    # the numbers are the checkpoint's own, as its family's loader rebuilds it
    out = load_checkpoint(checkpoint).predict(TEXTS)
    assert [LABEL_NAMES[i] for i in out["labels"]] == [r["label"] for r in rows]
    for r, weights in zip(rows, out["gate_weights"], strict=True):
        assert list(r["gate_weights"].values()) == pytest.approx(weights, abs=1e-6)


def test_run_id_and_run_folder_with_a_file(checkpoint: Path, logged_run: tuple[str, str], tmp_path: Path,
                                           tiny_experts: list[dict[str, Any]]) -> None:
    run_id, uri = logged_run
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text(f"{TEXTS[1]}\n\n  \n{TEXTS[2]}\r\n", encoding="utf-8")  # blank lines skipped
    experts = [e["name"] for e in tiny_experts]
    result = predict(run_id, "--tracking-uri", uri, "--text", TEXTS[0], "--file", str(texts_file), "--json")
    assert result.exit_code == 0, result.output
    check([json.loads(line) for line in result.stdout.splitlines()], TEXTS, experts)

    # the real command on a Ray Train run folder (its newest checkpoint), texts on stdin: stdout is JSON lines only
    run_folder = tmp_path / "train-2026"
    shutil.copytree(checkpoint, run_folder / "checkpoint_000001" / "model")
    proc = subprocess.run([str(Path(sys.executable).with_name("moe-orch")), "predict", str(run_folder), "--file", "-",
                           "--json"], input=f"{TEXTS[2]}\n{TEXTS[0]}\n", capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    check([json.loads(line) for line in proc.stdout.splitlines()], [TEXTS[2], TEXTS[0]], experts)


def test_bad_input_exits_2_saying_what(checkpoint: Path, logged_run: tuple[str, str], tmp_path: Path) -> None:
    _, uri = logged_run
    result = predict(str(checkpoint))
    assert result.exit_code == 2 and "no texts: give --text TEXT (repeatable) or --file FILE" in result.output
    result = predict(str(checkpoint), "--file", str(tmp_path / "missing.txt"))
    assert result.exit_code == 2 and "'--file'" in result.output and "does not exist" in result.output
    (tmp_path / "blank.txt").write_text("\n \n")
    result = predict(str(checkpoint), "--file", str(tmp_path / "blank.txt"))
    assert result.exit_code == 2 and "holds no text" in result.output
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = predict(str(checkpoint), "--file", str(tmp_path / "latin1.txt"))
    assert result.exit_code == 2 and "is not UTF-8 text" in result.output

    result = predict(str(tmp_path), "--text", "x")  # a folder without a checkpoint
    assert result.exit_code == 2 and "not a checkpoint" in result.stderr
    result = predict("no-such-thing", "--text", "x")
    assert result.exit_code == 2 and "got neither a checkpoint directory nor an MLflow run id" in result.stderr
    result = predict("0" * 32, "--tracking-uri", uri, "--text", "x")
    assert result.exit_code == 2 and f"run {'0' * 32} not found" in result.stderr


def test_a_family_without_a_predictor_is_named(tmp_path: Path) -> None:
    write_manifest(tmp_path / "more", Manifest(family="more", format_version=1, config={}))
    result = predict(str(tmp_path / "more"), "--text", "x")
    assert result.exit_code == 2
    assert "family 'more' has no predictor" in result.stderr and "the families ensemble" in result.stderr
