"""The MixLoRA family's declaration (``orchestrator.contract.Family``): LoRA / MixLoRA adapters on a
frozen pretrained causal LM, trained on instruction data, evaluated with lm-evaluation-harness
(ARC-Easy, HellaSwag). Registered in ``orchestrator/registry.py``."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.contract import DataSection, EvaluateSection, Family
from orchestrator.schema import setting
from trainables.lm.sections import LMServe
from trainables.mixlora.config import MixLoRAConfig

SOURCES = ("arc_easy", "hellaswag", "code_alpaca")
EVAL_TASKS = ("arc_easy", "hellaswag")


@dataclass
class InstructionData(DataSection):
    """Instruction data under ``root`` (``trainables.lm.instructions``): which sources, how much of each."""

    sources: list[str] = setting(factory=lambda: ["arc_easy"], some_of=SOURCES, doc="the instruction sources")
    max_train_examples: int | None = setting(2000, ge=1, doc="per source (seeded subset); null = all")
    max_val_examples: int = setting(128, ge=1, doc="ARC-Easy validation questions for val_loss")


@dataclass
class LMEvalSection(EvaluateSection):
    """Zero-shot ARC-Easy (test) and HellaSwag (our fixed eval part) through lm-evaluation-harness."""

    tasks: list[str] = setting(factory=lambda: list(EVAL_TASKS), some_of=EVAL_TASKS, doc="the lm-eval tasks")
    limit: int | None = setting(200, ge=1, doc="items per task; null = all (2,376 ARC-Easy, 2,056 HellaSwag)")
    batch_size: int = setting(16, ge=1, doc="sequences per forward pass")
    chat_template: bool = setting(True, doc="score choices as the assistant's answer to the question, as training "
                                            "formats it")
    routing_examples: int = setting(48, ge=0, doc="MixLoRA: examples per source for the router pictures; 0 = none")


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
    weights=("fp32", "int8", "int4"),
    devices=("cpu", "cuda"),  # evaluator, generator and LMEndpoint: bfloat16 on cuda (trainables.lm.base.to_device)
    serve=LMServe,
    endpoint="trainables.lm.serving:LMEndpoint",
)
