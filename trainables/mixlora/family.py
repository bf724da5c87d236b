"""The MixLoRA family's declaration (``orchestrator.contract.Family``): LoRA / MixLoRA adapters on a
frozen pretrained causal LM, trained on instruction data, evaluated with lm-evaluation-harness
(ARC-Easy, HellaSwag). Registered in ``orchestrator/registry.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.contract import DataSection, EvaluateSection, Family
from orchestrator.schema import fmt
from trainables.lm.sections import LMServe
from trainables.mixlora.config import MixLoRAConfig

SOURCES = ("arc_easy", "hellaswag", "code_alpaca")
EVAL_TASKS = ("arc_easy", "hellaswag")


@dataclass
class InstructionData(DataSection):
    """Instruction data under ``root`` (``trainables.mixlora.data``): which sources, how much of each."""

    sources: list[str] = field(default_factory=lambda: ["arc_easy"])
    max_train_examples: int | None = 2000  # per source (seeded subset); null = all
    max_val_examples: int = 128  # ARC-Easy validation questions for val_loss

    def errors(self) -> list[str]:
        errors = [f"sources: got {fmt(s)}, expected some of {', '.join(SOURCES)}" for s in self.sources
                  if s not in SOURCES]
        if not self.sources:
            errors.append(f"sources: got [], expected some of {', '.join(SOURCES)}")
        if self.max_train_examples is not None and self.max_train_examples < 1:
            errors.append(f"max_train_examples: got {self.max_train_examples}, expected null or >= 1")
        if self.max_val_examples < 1:
            errors.append(f"max_val_examples: got {self.max_val_examples}, expected >= 1")
        return errors


@dataclass
class LMEvalSection(EvaluateSection):
    """Zero-shot ARC-Easy (test) and HellaSwag (our fixed eval part) through lm-evaluation-harness."""

    tasks: list[str] = field(default_factory=lambda: list(EVAL_TASKS))
    limit: int | None = 200  # items per task; null = all (2,376 ARC-Easy, 2,056 HellaSwag)
    batch_size: int = 16
    chat_template: bool = True  # score choices as the assistant's answer to the question, as training formats it
    routing_examples: int = 48  # MixLoRA: examples per source for the router pictures; 0 = none

    def errors(self) -> list[str]:
        errors = [f"tasks: got {fmt(t)}, expected some of {', '.join(EVAL_TASKS)}" for t in self.tasks
                  if t not in EVAL_TASKS]
        if not self.tasks:
            errors.append(f"tasks: got [], expected some of {', '.join(EVAL_TASKS)}")
        if self.limit is not None and self.limit < 1:
            errors.append(f"limit: got {self.limit}, expected null or >= 1")
        if self.batch_size < 1:
            errors.append(f"batch_size: got {self.batch_size}, expected >= 1")
        if self.routing_examples < 0:
            errors.append(f"routing_examples: got {self.routing_examples}, expected >= 0")
        return errors


FAMILY = Family(
    name="mixlora",
    model=MixLoRAConfig,
    data=InstructionData,
    recipe="trainables.mixlora.recipe:MixLoRARecipe",
    checkpoint="trainables.mixlora.checkpoint:load_model_from",
    strategies=("ddp", "deepspeed"),
    metrics=("step", "train_loss", "val_loss", "val_perplexity", "lr", "tokens_per_s", "tokens_seen",
             "load_balance_loss", "train_time_s"),
    metric_prefixes=("routing/",),
    progress=(("train_loss", "train_loss"), ("val_loss", "val_loss")),
    evaluate=LMEvalSection,
    evaluator="trainables.mixlora.evaluation:evaluate_checkpoint",
    eval_metrics=("eval_router_entropy", "eval_load_cv", "eval_time_s"),
    eval_metric_prefixes=("arc_easy/", "hellaswag/"),
    history=("routing/", ("/entropy", "/cv")),
    base_models=True,
    generator="trainables.mixlora.generation:generate",
    serve=LMServe,
    endpoint="trainables.lm.serving:LMEndpoint",
)
