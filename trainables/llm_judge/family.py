"""The LLM-judge MoE family's declaration (``orchestrator.contract.Family``): random expert configs
over LLMs (local or OpenAI-compatible), judges that select an answer, rewards and value learning
(``../shared/specs/llm-judge-moe.md``). Registered in ``orchestrator/registry.py``.

It learns without gradients: its recipe is a ``trainables.training.IterativeRecipe`` (one question
per iteration), run by the same Ray Train worker, reports, checkpoints and MLflow as every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.contract import DataSection, EvaluateSection, Family
from orchestrator.schema import fmt, setting
from trainables.llm_judge.config import JudgeConfig
from trainables.llm_judge.tasks import DATASETS, MBPP_SPLITS

SPLITS = ("train", "validation", "test")
EVAL_TASKS = ("arc_easy", "mbpp")


@dataclass
class QuestionData(DataSection):
    """The questions iterated over: ``limit`` of ``dataset``/``split``, shuffled with ``train.seed``."""

    dataset: str = setting("arc_easy", one_of=DATASETS, doc='arc_easy | mbpp | prompts (a JSONL of {"prompt", '
                                                            '"context"}; no ground truth)')
    split: str = setting("train", one_of=SPLITS, doc="the split the questions come from")
    limit: int | None = setting(200, ge=1, doc="questions; null = all")
    prompts_file: str | None = setting(None, doc="dataset prompts: the JSONL file (a relative path: from where "
                                                 "the command runs, e.g. experiments/prompts/acme_tools.jsonl)")

    def __post_init__(self) -> None:
        # Made absolute where the experiment is loaded (the driver), like ``root``: Ray Train workers run in
        # their own working directory, where a relative path would name nothing.
        if isinstance(self.prompts_file, str) and self.prompts_file.strip():
            self.prompts_file = str(Path(self.prompts_file).expanduser().absolute())

    def cross_checks(self) -> list[str]:
        if self.dataset == "prompts" and not self.prompts_file:
            return ["prompts_file: got null, expected a JSONL file of prompts with dataset 'prompts'"]
        return []


@dataclass
class JudgeEvaluate(EvaluateSection):
    """Every expert answers each question; the judge-selected answer against a random expert, the
    best single expert, the highest-valued expert and the oracle (``evaluation.py``)."""

    tasks: list[str] = setting(factory=lambda: ["arc_easy"], some_of=EVAL_TASKS, doc="the evaluation tasks")
    split: str = setting("test", one_of=SPLITS, doc="ARC-Easy's test split; MBPP's test task ids (11-510)")
    limit: int = setting(20, ge=1, doc="questions per task (the split's first ones after a fixed shuffle, seed 0)")
    concurrent_questions: int = setting(4, ge=1, doc="questions in flight at once (their calls share the backend's "
                                                     "batch)")
    max_tokens: int | None = setting(None, ge=1, doc="the experts' answer budget here (MBPP code needs more); "
                                                     "null = as trained")


def _checks(exp: Any) -> list[str]:
    errors = []
    if exp.scaling.num_workers != 1:
        errors.append(f"scaling.num_workers: got {exp.scaling.num_workers}, expected 1 (the llm_judge family "
                      "runs its iterations on one worker; its models run in their own Ray actors)")
    if exp.data.dataset == "prompts" and exp.model.external_reward != "random":
        errors.append(f"model.external_reward: got {fmt(exp.model.external_reward)}, expected 'random' with "
                      "data.dataset 'prompts' (open prompts have no ground truth)")
    if exp.data.dataset == "mbpp" and exp.data.split not in MBPP_SPLITS:
        errors.append(f"data.split: got {fmt(exp.data.split)}, expected one of {', '.join(MBPP_SPLITS)}")
    return errors


FAMILY = Family(
    name="llm_judge",
    model=JudgeConfig,
    data=QuestionData,
    recipe="trainables.llm_judge.recipe:JudgeRecipe",
    checkpoint="trainables.llm_judge.checkpoint:load",
    strategies=("ddp",),
    metrics=("step", "accuracy", "correct", "cumulative_reward", "total_reward", "intrinsic_reward",
             "external_reward", "judge_score", "selected_expert", "credited_expert", "exploration_rate",
             "explored", "experts_answered", "expert_failures", "judge_failures", "skipped", "iterations_skipped",
             "tokens", "prompt_tokens", "completion_tokens", "calls", "failed_calls", "retries", "iteration_s",
             "train_time_s"),
    metric_prefixes=("value/",),
    progress=(("total_reward", "reward"), ("cumulative_reward", "sum"), ("accuracy", "acc"),
              ("exploration_rate", "eps")),
    evaluate=JudgeEvaluate,
    evaluator="trainables.llm_judge.evaluation:evaluate_checkpoint",
    eval_metrics=("eval_time_s",),
    eval_metric_prefixes=("arc_easy/", "mbpp/"),
    checks=_checks,
)
