"""Shared setup for orchestrator tests: the data root is the repository's ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import SHARED_DATA

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "experiments"


@pytest.fixture(autouse=True)
def _data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE_ORCH_DATA", os.environ.get("MOE_ORCH_DATA", str(SHARED_DATA)))
