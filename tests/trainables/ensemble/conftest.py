"""Tiny from-config experts (BERT + WordPiece, RoBERTa + BPE, hidden 32), saved to a temp dir and loaded by path."""

from __future__ import annotations

from typing import Any

import pytest
from support import SHARED_DATA


@pytest.fixture(scope="session")
def sst2() -> dict[str, list[tuple[str, int]]]:
    """Small seeded SST-2 slices: 3000 train sentences, 200 dev sentences; and the whole dev set."""
    from trainables.ensemble.data import load_sst2, subset

    return {"train": subset(load_sst2("train", SHARED_DATA), 3000, 0),
            "dev": subset(load_sst2("validation", SHARED_DATA), 200, 0),
            "dev_all": load_sst2("validation", SHARED_DATA)}  # 872 sentences, for statistical checks


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory: pytest.TempPathFactory, sst2: dict[str, Any]) -> list[dict[str, Any]]:
    """Path-based expert specs of two tiny from-config experts."""
    from trainables.ensemble.experts import export_experts, small_expert_specs

    return export_experts(small_expert_specs(), tmp_path_factory.mktemp("experts"), [t for t, _ in sst2["train"]])
