"""`moe-orch serve models:/<name>@<alias>`: registry targets resolved against a real MLflow store
(SQLite), and `--follow` refused, with exit 2 and a message, where it cannot work. No Ray starts
here: every case ends before the app would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.tracking import Store
from serve.resolve import TargetError, resolve_target


@pytest.fixture(scope="module")
def registered(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Model ``ens`` with versions 1 and 2 (the same tiny ensemble checkpoint), alias ``current`` on 2,
    then moved back to 1 by hand, so ``@current``, ``@latest`` and ``/2`` name different versions."""
    store = Store.at(f"sqlite:///{tmp_path_factory.mktemp('registry')}/mlflow.db")
    run = store.start_run(store.experiment_id("registry-test"), "registry-test/run")
    for step in (1, 2):
        run.log_artifacts(tiny_checkpoint, f"registered/step_{step:06d}")
        run.register_version("ens", f"registered/step_{step:06d}", {"step": step})
    run.client.set_registered_model_alias("ens", "current", "1")
    run.end()
    return {"uri": store.uri, "run_id": run.run_id}


@pytest.mark.parametrize(("target", "version", "path"), [
    ("models:/ens@current", "1", "registered/step_000001"),
    ("models:/ens@latest", "2", "registered/step_000002"),
    ("models:/ens/2", "2", "registered/step_000002"),
])
def test_a_registry_uri_resolves_to_its_version_files(registered: dict[str, Any], target: str, version: str,
                                                      path: str) -> None:
    found = resolve_target(target, None, registered["uri"])
    try:
        assert found.version == version and found.family.name == "ensemble"
        assert found.source == {"run_id": registered["run_id"], "tracking_uri": registered["uri"],
                                "artifact_path": path, "version": version}
        assert (found.local_dir / "config.json").is_file()  # downloaded here, to read its family and settings
    finally:
        found.cleanup()
    assert not found.local_dir.exists()


@pytest.mark.parametrize("target", ["models:/ens@nobody", "models:/nothing@current", "models:/ens/9",
                                    "models:/ens"])
def test_an_unknown_version_is_a_clear_error(registered: dict[str, Any], target: str) -> None:
    with pytest.raises(TargetError, match="models:/"):
        resolve_target(target, None, registered["uri"])


def test_follow_needs_an_alias_and_a_family_that_can_swap(registered: dict[str, Any],
                                                          tiny_checkpoint: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", str(tiny_checkpoint), "--follow"])
    assert result.exit_code == 2 and "--follow: needs a models:/<name>@<alias> target" in result.output
    result = runner.invoke(main, ["serve", "models:/ens/2", "--follow", "--tracking-uri", registered["uri"]])
    assert result.exit_code == 2 and "needs a models:/<name>@<alias>" in result.output
    # the ensemble's endpoint has no reload(): following would mean restarting replicas, so it is refused
    result = runner.invoke(main, ["serve", "models:/ens@current", "--follow", "--tracking-uri", registered["uri"]])
    assert result.exit_code == 2 and "family ensemble's serve endpoint cannot swap" in result.output, result.output
    result = runner.invoke(main, ["serve", "models:/ens@gone", "--tracking-uri", registered["uri"]])
    assert result.exit_code == 2 and "no such registered model version" in result.output
