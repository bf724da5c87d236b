"""The LLM-judge MoE's checkpoint: no weights, only what was drawn and learned.

``model/`` holds ``config.json`` (the manifest: the model section as ``config``; ``team``: every
expert's generation config, the gating and reward models; ``metadata``: step, experiment),
``state.json`` (the ``ValueState``: values, exploration rate, selection history, summed reward,
plus running counts) and ``candidates.csv`` (every candidate of every iteration with its judges'
scores; ``pipeline.CSV_FIELDS``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainables.llm_judge.config import JudgeConfig
from trainables.llm_judge.pipeline import Team
from trainables.llm_judge.values import ValueState
from trainables.training.manifest import Manifest, write_manifest

FAMILY_NAME = "llm_judge"
FORMAT_VERSION = 1
STATE_FILE = "state.json"
CANDIDATES_FILE = "candidates.csv"


@dataclass
class JudgeCheckpoint:
    """What ``load`` rebuilds: the config, the team, the learned state and the candidates so far."""

    config: JudgeConfig
    team: Team
    state: ValueState
    counts: dict[str, float] = field(default_factory=dict)  # running totals (graded, correct, tokens...)
    candidates_csv: str = ""


def save(directory: Path, checkpoint: JudgeCheckpoint, metadata: dict[str, Any]) -> None:
    write_manifest(directory, Manifest(FAMILY_NAME, FORMAT_VERSION, checkpoint.config.to_dict(), metadata,
                                       extra={"team": checkpoint.team.to_json()}))
    (directory / STATE_FILE).write_text(json.dumps({**checkpoint.state.to_json(), "counts": checkpoint.counts},
                                                   indent=1))
    (directory / CANDIDATES_FILE).write_text(checkpoint.candidates_csv, encoding="utf-8")


def load(directory: str | Path, manifest: Manifest) -> JudgeCheckpoint:
    """The checkpoint in ``directory`` (the family's loader, ``Family.checkpoint``)."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    counts = state.pop("counts", {})
    candidates = directory / CANDIDATES_FILE
    return JudgeCheckpoint(JudgeConfig.from_dict(manifest.config), Team.from_json(manifest.extra["team"]),
                           ValueState.from_json(state), counts,
                           candidates.read_text(encoding="utf-8") if candidates.is_file() else "")
