"""The tutorial's parts, exactly: random configs, score and label parsing, the value update, the
exploration schedule, termination, the repetition rule, and the epsilon-greedy choice of experts."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from trainables.llm_judge.config import JudgeConfig
from trainables.llm_judge.experts import check_output_completeness, parse_label, parse_score, random_config
from trainables.llm_judge.pipeline import Team
from trainables.llm_judge.tasks import extract_choice
from trainables.llm_judge.values import ValueLearner


def test_random_configs_are_seeded_and_inside_the_tutorials_ranges() -> None:
    cfg = JudgeConfig(models=["a", "b", "c"], num_experts=12)
    team = Team.draw(cfg, seed=3)
    assert team == Team.draw(cfg, seed=3) and team != Team.draw(cfg, seed=4)
    assert Team.from_json(team.to_json()) == team
    for e in team.experts:
        assert e.model in cfg.models and 0.7 <= e.temperature <= 1.2 and 0.8 <= e.top_p <= 1.0
        assert 0 <= e.frequency_penalty <= 0.5 and 0 <= e.presence_penalty <= 0.5 and e.max_tokens == 200
    assert team.gating.max_tokens == cfg.judge_max_tokens
    assert len({e.temperature for e in team.experts}) == 12
    assert random_config(random.Random(0), cfg, 7).max_tokens == 7


@pytest.mark.parametrize(("reply", "score"), [
    ("0.734", 0.734), ("Score: 0.8", 0.8), ("I give it 1", 1.0), ("7/10", 0.7), ("85%", 0.85),
    ("85 / 100 overall", 0.85), ("0.12345", 0.123), ("It scores 3 then 0.5", 0.5), ("A. a mirror", None),
    ("between 2 and 5", None), ("", None)])
def test_a_score_is_the_first_number_in_zero_one(reply: str, score: float | None) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize(("reply", "label"), [
    ("Highly effective.", "highly effective"), ("effective", "effective"), ("It is ineffective", None),
    ("moderate, maybe poor", "moderate"), ("BAD", "bad"), ("fine", None)])
def test_a_label_is_the_first_of_the_five(reply: str, label: str | None) -> None:
    assert parse_label(reply) == label


@pytest.mark.parametrize(("text", "choice"), [
    ("B. the Sun", "B"), ("(C) a rock", "C"), ("The answer is D because", "D"), ("answer: a", "A"),
    ("I think A. is right", "A"), ("A mirror is shiny", None), ("Because of B) and", "B"), ("", None)])
def test_the_answer_letter_is_extracted(text: str, choice: str | None) -> None:
    assert extract_choice(text, ("A", "B", "C", "D")) == choice
    assert extract_choice("2. the Sun", ("1", "2", "3", "4")) == "2"


def test_completeness_is_a_final_sentence_mark() -> None:
    assert check_output_completeness("Done.") and check_output_completeness("Why?  \n")
    assert not check_output_completeness("and then the")


def test_value_update_schedule_and_termination_follow_the_tutorial() -> None:
    cfg = JudgeConfig(num_experts=3, learning_rate=0.5, discount_factor=0.9, min_iterations=3,
                      reward_threshold=3.0, repetition_rule=False)
    learner = ValueLearner.fresh(cfg)
    assert learner.update(1, 2.0) == pytest.approx(0.5 * (2.0 + 0.9 * 0 - 0))  # V += a(r + g max V - V)
    assert learner.update(0, 1.0) == pytest.approx(0.5 * (1.0 + 0.9 * 1.0 - 0))
    assert learner.update(1, 0.0) == pytest.approx(1.0 + 0.5 * (0.0 + 0.9 * 1.0 - 1.0))
    assert learner.state.cumulative_reward == 3.0 and learner.best_expert() == 0
    assert [learner.update_exploration_rate(it) for it in range(5)] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.1, 0.1])
    learner.state.iterations = 2
    assert not learner.finished()  # reward reached, iterations not
    learner.state.iterations = 3
    assert learner.finished()


def test_the_repetition_rule_credits_a_random_expert_once_a_selection_repeats() -> None:
    cfg = JudgeConfig(num_experts=4, repetition_rule=True)
    learner, rng = ValueLearner.fresh(cfg), random.Random(0)
    assert learner.credit(2, rng) == 2  # first time: the selected one
    credited = [learner.credit(2, rng) for _ in range(40)]
    assert set(credited) == {0, 1, 2, 3}  # afterwards a uniform draw
    off = ValueLearner.fresh(replace(cfg, repetition_rule=False))
    assert [off.credit(2, rng) for _ in range(5)] == [2] * 5
    assert off.state.selection_history == [2] * 5


def test_epsilon_greedy_picks_the_highest_values_or_explores() -> None:
    cfg = JudgeConfig(num_experts=5, experts_per_query=2)
    learner = ValueLearner.fresh(cfg)
    learner.state.values = [0.1, 0.9, 0.0, 0.5, 0.2]
    learner.state.exploration_rate = 0.0
    assert learner.choose(random.Random(1)) == ([1, 3], False)
    learner.state.exploration_rate = 1.0
    picks = [learner.choose(random.Random(seed)) for seed in range(30)]
    assert all(explored and len(experts) == 2 for experts, explored in picks)
    assert len({tuple(experts) for experts, _ in picks}) > 3
    assert ValueLearner.fresh(replace(cfg, experts_per_query=None)).choose(random.Random(0)) == ([0, 1, 2, 3, 4], False)


def test_config_errors_name_the_field() -> None:
    errors = JudgeConfig(backend="http", models=[], num_experts=0, experts_per_query=9, temperature_range=[1.5, 0.5],
                         learning_rate=2.0, external_reward="maybe").errors()
    for key in ("backend", "models", "num_experts", "experts_per_query", "temperature_range", "learning_rate",
                "external_reward"):
        assert any(e.startswith(f"{key}:") for e in errors), key
    assert JudgeConfig(backend="openai").errors() == [
        "base_url: got null, expected the endpoint's URL with backend 'openai' (e.g. http://127.0.0.1:8000/v1)"]


def test_ground_truth_grades_arc_letters_and_runs_mbpp_code_in_the_sandbox() -> None:
    from trainables.llm_judge.tasks import grade, load_questions

    arc = load_questions("arc_easy", "validation", 3, None, seed=0)
    assert len(arc) == 3 and arc == load_questions("arc_easy", "validation", 3, None, seed=0)
    q = arc[0]
    wrong = next(label for label in q.labels if label != q.answer)
    assert grade(q, f"{q.answer}. because") and not grade(q, f"{wrong}. because") and not grade(q, "no idea")
    mbpp = load_questions("mbpp", "test", 1, None, seed=0)[0]
    assert grade(mbpp, f"```python\n{mbpp.problem.reference}\n```")
    assert not grade(mbpp, "```python\ndef nothing():\n    pass\n```")


def test_open_prompts_need_the_random_reward(tmp_path) -> None:
    from click.testing import CliRunner

    from orchestrator.cli import main
    from trainables.llm_judge.tasks import load_questions

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Evaluate AI.", "context": "Acme invests."}\n{"prompt": "Name a colour."}\n')
    questions = load_questions("prompts", "train", None, None, prompts_file=str(prompts), shuffle=False)
    assert [q.context for q in questions] == ["Acme invests.", "Name a colour."] and not questions[0].gradable
    experiment = tmp_path / "judge.yaml"
    experiment.write_text(f"name: j\nfamily: llm_judge\ndata: {{dataset: prompts, prompts_file: {prompts}}}\n")
    result = CliRunner().invoke(main, ["validate", str(experiment)])
    assert result.exit_code == 2 and "model.external_reward: got 'ground_truth', expected 'random'" in result.output
    result = CliRunner().invoke(main, ["validate", str(experiment), "model.external_reward=random",
                                       "scaling.num_workers=2"])
    assert result.exit_code == 2 and "scaling.num_workers: got 2, expected 1" in result.output
