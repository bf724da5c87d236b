"""The shipped open-prompt example (``experiments/prompts/acme_tools.jsonl``): it is well-formed, loads
through the prompts reader, and ``dataset: prompts`` validates as shipped (``experiments/llm_judge_prompts.yaml``,
and ``experiments/llm_judge.yaml`` with the two overrides its header names), its relative path made
absolute where the experiment is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.config import load_experiment
from trainables.llm_judge.tasks import load_questions

REPO = Path(__file__).resolve().parents[3]
PROMPTS = REPO / "experiments" / "prompts" / "acme_tools.jsonl"
PROMPTS_YAML = REPO / "experiments" / "llm_judge_prompts.yaml"
MAIN_YAML = REPO / "experiments" / "llm_judge.yaml"
TO_PROMPTS = ["data.dataset=prompts", "model.external_reward=random"]


def test_the_example_file_is_well_formed() -> None:
    lines = PROMPTS.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 5
    for line in lines:
        row = json.loads(line)
        assert set(row) <= {"prompt", "context"} and isinstance(row["prompt"], str) and row["prompt"].strip()
        assert isinstance(row.get("context", ""), str)
    questions = load_questions("prompts", "train", None, None, prompts_file=str(PROMPTS), shuffle=False)
    assert len(questions) == len(lines) and len({q.id for q in questions}) == len(lines)
    assert not any(q.gradable for q in questions)  # open prompts: the random external reward
    first = json.loads(lines[0])
    assert questions[0].messages == [{"role": "user", "content": f"{first['context']}\n\n{first['prompt']}"}]
    assert questions[0].context == first["context"]


@pytest.mark.parametrize(("path", "overrides"), [(PROMPTS_YAML, []), (MAIN_YAML, TO_PROMPTS)],
                         ids=["llm_judge_prompts.yaml", "llm_judge.yaml+overrides"])
def test_dataset_prompts_runs_as_shipped(path: Path, overrides: list[str], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the commands run from the repository root, where the relative path points
    result = CliRunner().invoke(main, ["validate", str(path), *overrides])
    assert result.exit_code == 0, result.output
    exp = load_experiment(path, overrides)
    assert exp.data.dataset == "prompts" and exp.data.prompts_file == str(PROMPTS)  # absolute, in the driver
    monkeypatch.chdir(tmp_path)  # as a Ray Train worker does: the path still names the file
    data = exp.data
    questions = load_questions(data.dataset, data.split, data.limit, data.root, seed=exp.train.seed,
                               prompts_file=data.prompts_file)
    assert len(questions) == len(PROMPTS.read_text(encoding="utf-8").splitlines())


def test_the_main_example_keeps_its_dataset() -> None:
    exp = load_experiment(MAIN_YAML)
    assert exp.data.dataset == "arc_easy" and exp.model.external_reward == "ground_truth"
