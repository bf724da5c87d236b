"""``storage.path`` and ``orchestrator.storage.Storage``: what the experiment accepts, and the same folder
operations on a local disk and in an S3 bucket (moto's server, through pyarrow)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from support import S3Server

from orchestrator.config import load_experiment
from orchestrator.experiment import ExperimentError
from orchestrator.storage import Storage, resolve

TINY = Path(__file__).resolve().parents[2] / "experiments" / "tiny.yaml"


@pytest.mark.parametrize(("value", "message"), [
    ("ftp://host/x", "storage.path: got 'ftp://host/x', expected a folder or a URI with scheme file://, s3://, gs://"),
    ("s3://b/p?access_key=AKIA&secret_key=hunter2", "storage.path: got a URI with access_key, secret_key in its "
                                                    "query, expected credentials in the environment"),
    ("' '", "storage.path: got an empty string"),
])
def test_a_bad_storage_path_is_named_and_a_secret_is_never_echoed(value: str, message: str) -> None:
    with pytest.raises(ExperimentError) as caught:
        load_experiment(TINY, [f"storage.path={value}"])
    assert any(e.startswith(message) for e in caught.value.errors), caught.value.errors
    assert "hunter2" not in str(caught.value)


def test_null_means_the_environment_else_ray_results_here(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MOE_ORCH_STORAGE", raising=False)
    assert resolve(None).local_path == tmp_path / "ray_results"
    monkeypatch.setenv("MOE_ORCH_STORAGE", "s3://bucket/runs?endpoint_override=http://127.0.0.1:9")
    assert str(resolve(None)) == "s3://bucket/runs" and resolve(None).local_path is None
    assert resolve("shared").local_path == tmp_path / "shared"  # the experiment's own value wins


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return Storage.at(tmp_path / "root")
    server: S3Server = request.getfixturevalue("s3")
    return Storage.at(server.uri(f"unit-{tmp_path.name}"))


def test_folders_files_moves_and_copies(root: Storage, tmp_path: Path) -> None:
    run = root / "exp" / "train-1"
    assert not run.exists() and root.folders() == []
    run.write_text("mlflow_run_id", "abc")
    assert run.file("mlflow_run_id").read_text() == "abc" and run.file("mlflow_run_id").exists()
    run.write_text("mlflow_run_id", "def")  # replaced whole
    assert run.read_text("mlflow_run_id") == "def"
    (root / "exp" / "train-0").mkdir()
    (root / "exp" / "sweep").mkdir()
    assert [f.name for f in (root / "exp").folders("train-")] == ["train-0", "train-1"]

    local = tmp_path / "ckpt"
    (local / "model").mkdir(parents=True)
    (local / "model" / "config.json").write_text("{}")
    (run / "checkpoint_000010").upload(local)
    back = (run / "checkpoint_000010").download(tmp_path / "back")
    assert (back / "model" / "config.json").read_text() == "{}"

    again = pickle.loads(pickle.dumps(run))  # what a trial on another node gets: the URI, reopened there
    assert again == run and again.read_text("mlflow_run_id") == "def"
    run.move_to(root / "exp" / "train-2")
    assert not run.exists() and [f.name for f in (root / "exp" / "train-2").folders()] == ["checkpoint_000010"]
    (root / "exp").delete()
    assert not (root / "exp").exists()
