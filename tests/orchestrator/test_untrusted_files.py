"""Untrusted files: a checkpoint holding a pickle is refused before anything in it is read, a
training state that does not load weights-only is refused, and experiment YAML is parsed safely.
Each malicious payload would create a marker file if it ever ran."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from orchestrator.checkpoints import find_checkpoint_dir, load_checkpoint
from orchestrator.cli import main
from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError
from trainables.training.manifest import UnsafeCheckpointError, pickled_files
from trainables.training.strategies import TRAIN_STATE, DDPStrategy


class _Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _checkpoint(directory: Path) -> Path:
    """A directory that is a checkpoint by its manifest, with a safetensors file beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"family": "more", "format_version": 1, "config": {}}))
    save_file({"w": torch.zeros(2)}, str(directory / "model.safetensors"))
    return directory


def test_a_clean_checkpoint_has_no_pickles(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    assert pickled_files(ckpt) == [] and find_checkpoint_dir(ckpt) == ckpt


@pytest.mark.parametrize("name", ["evil.pkl", "pytorch_model.bin", "nested/weights.pt", "no_suffix", "model.dat"])
def test_a_checkpoint_holding_a_pickle_is_refused_unread(tmp_path: Path, name: str) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "ran"
    target = ckpt / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if name == "model.dat":  # torch.save's zip format, under an innocent name
        torch.save({"x": _Payload(marker)}, target)
    else:
        target.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(UnsafeCheckpointError, match=name.split("/")[-1]):
        find_checkpoint_dir(tmp_path / "ckpt")
    with pytest.raises(UnsafeCheckpointError, match="pickled files"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def test_the_cli_names_the_pickle_and_exits_2(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "ran"
    (ckpt / "optimizer.pt").write_bytes(pickle.dumps(_Payload(marker)))
    for command in (["evaluate", str(ckpt), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                    ["generate", str(ckpt), "--prompt", "hi"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, result.output
        assert "optimizer.pt" in result.output and "arbitrary code" in result.output
        assert "Traceback" not in result.output
    assert not marker.exists()


def test_a_training_state_that_is_not_weights_only_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"step": 3, "optimizer": _Payload(marker), "scheduler": {}}, tmp_path / TRAIN_STATE)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(UnsafeCheckpointError, match="weights-only"):
        DDPStrategy(rank=0).restore(tmp_path, model, optimizer, scheduler)
    assert not marker.exists()


def test_experiment_yaml_is_parsed_safely(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nfamily: more\n")
    with pytest.raises(ExperimentError):
        load_experiment(path)
    result = CliRunner().invoke(main, ["train", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not marker.exists()
