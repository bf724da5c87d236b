"""The family contract without Ray: the registry, one manifest read by one ``load_checkpoint``, and the
commands refusing what a family does not declare (exit 2, the family named)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from orchestrator.checkpoints import find_checkpoint_dir, load_checkpoint
from orchestrator.cli import main
from orchestrator.contract import Family
from orchestrator.registry import family_names, get_family, register
from orchestrator.tracking import DEFAULT_URI, Store, resolve_uri
from trainables.data import ByteTokenizer
from trainables.more import MoREConfig, MoRELM, save_checkpoint
from trainables.training.manifest import read_manifest

TINY_MORE = MoREConfig(n_layer=1, n_head=2, d_model=16, num_experts=2, top_k=1, expert_hidden=16, block_size=16)


@pytest.fixture(scope="module")
def more_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(MoRELM(TINY_MORE), ByteTokenizer(), tmp_path_factory.mktemp("more") / "model", {"step": 3})


def test_builtin_families_are_registered_and_declared() -> None:
    assert {"more", "ensemble", "mixlora", "dylora", "llm_judge"} <= set(family_names())
    more, ensemble = get_family("more"), get_family("ensemble")
    assert more.strategies == ("ddp", "deepspeed") and ensemble.strategies == ("ddp",)
    assert more.evaluator and ensemble.evaluator is None and ensemble.endpoint and more.endpoint is None
    with pytest.raises(KeyError, match="unknown family 'mixtral'; known: dylora, ensemble, llm_judge, mixlora, more"):
        get_family("mixtral")


BROKEN = Family(name="broken", model=MoREConfig, data=dict, recipe="x:Y", checkpoint="x:z", evaluator="x:e",
                strategies=("fsdp",))


def test_a_broken_declaration_is_refused_naming_each_problem() -> None:
    with pytest.raises(TypeError) as info:
        register(f"{__name__}:BROKEN")
    message = str(info.value)
    for needle in ("data: got dict, expected a DataSection subclass", "evaluate/evaluator: got one without the other",
                   "strategies: got 'fsdp'"):
        assert needle in message
    assert "broken" not in family_names()


def test_load_checkpoint_dispatches_on_the_manifest(more_checkpoint: Path) -> None:
    manifest = read_manifest(more_checkpoint)
    assert (manifest.family, manifest.format_version, manifest.metadata["step"]) == ("more", 1, 3)
    loaded = load_checkpoint(more_checkpoint.parent)  # a Ray checkpoint folder holding model/
    assert loaded.family.name == "more" and isinstance(loaded.model, MoRELM) and not loaded.model.training
    assert loaded.directory == more_checkpoint
    x = torch.randint(0, 259, (1, 8))
    original = MoRELM(TINY_MORE)
    original.load_state_dict(loaded.model.state_dict())
    assert torch.equal(original.eval()(x).logits, loaded.model(x).logits)


def test_legacy_ensemble_manifest_still_reads(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"format": "moe-orch/ensemble", "version": 1,
                                                      "config": {"top_k": 1}, "label_names": ["n", "p"]}))
    manifest = read_manifest(tmp_path)
    assert (manifest.family, manifest.format_version, manifest.extra) == ("ensemble", 1, {"label_names": ["n", "p"]})


def test_a_hugging_face_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    assert find_checkpoint_dir(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        load_checkpoint(tmp_path)


def test_serve_refuses_a_family_without_a_serve_app(more_checkpoint: Path) -> None:
    result = CliRunner().invoke(main, ["serve", str(more_checkpoint)])
    assert result.exit_code == 2
    assert "family 'more' has no serve app" in result.output


def test_evaluate_refuses_a_family_without_an_evaluator(tmp_path: Path) -> None:
    ckpt = tmp_path / "ens"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"family": "ensemble", "format_version": 2, "config": {}}))
    result = CliRunner().invoke(main, ["evaluate", str(ckpt), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2 and "family 'ensemble' has no evaluator" in result.output


def test_evaluate_names_every_bad_setting_and_a_missing_checkpoint(more_checkpoint: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/m.db"
    result = CliRunner().invoke(main, ["evaluate", str(more_checkpoint), "--tracking-uri", uri, "arith_n=0", "nope=1"])
    assert result.exit_code == 2
    assert "evaluate.nope: got an unknown key" in result.output and "evaluate.arith_n: got 0" in result.output
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--tracking-uri", uri])
    assert result.exit_code == 2 and "not a checkpoint" in result.output


def test_mlflow_tracking_uri_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            more_checkpoint: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_uri() == f"sqlite:///{tmp_path}/mlflow.db" and DEFAULT_URI == "sqlite:///mlflow.db"
    elsewhere = f"sqlite:///{tmp_path}/elsewhere/mlflow.db"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", elsewhere)
    assert resolve_uri() == elsewhere and resolve_uri("sqlite:///x.db") == f"sqlite:///{tmp_path}/x.db"

    # a run stored where MLFLOW_TRACKING_URI points is found without --tracking-uri
    store = Store.at()
    run = store.start_run(store.experiment_id("env-test"), "env-test/run")
    run.log_artifacts(more_checkpoint, "checkpoint")
    run.end()
    result = CliRunner().invoke(main, ["evaluate", run.run_id, "--tasks", "generation", "generation_tokens=4"])
    assert result.exit_code == 0, result.output
    assert f"MLflow run: {run.run_id} ({elsewhere})" in result.output
    assert not (tmp_path / "mlflow.db").exists()
