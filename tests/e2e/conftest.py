"""End-to-end tests: the real CLI (click) on one real local Ray per module, real MLflow sqlite stores.

The CLI reuses a Ray that is already running (``orchestrator.ray_runtime.ray_session``), so
each module starts Ray once, with the same ``tune_driver`` resource the CLI would give it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "experiments" / "tiny.yaml"


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    from orchestrator.ray_runtime import TRAIN_ENV_DEFAULTS, start_local_ray

    os.environ.setdefault("MOE_ORCH_DATA", str(SHARED_DATA))
    for key, value in TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    cpus = max(2, os.cpu_count() or 2)
    start_local_ray(cpus)
    yield
    ray.shutdown()


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the command from a fresh folder (ray_results/ lands there) with the shared data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOE_ORCH_DATA", os.environ.get("MOE_ORCH_DATA", str(SHARED_DATA)))
    return tmp_path
