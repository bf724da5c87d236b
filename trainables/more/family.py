"""The MoRE family's declaration (``orchestrator.contract.Family``): its sections, recipe,
metrics, checkpoint loader and evaluator. Registered in ``orchestrator/registry.py``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.contract import DataSection, EvaluateSection, Family
from orchestrator.schema import fmt, setting
from trainables.data.arithmetic import OPERATORS, ArithmeticFormat
from trainables.data.mixture import ARITH_TRAIN_DIGITS
from trainables.more.config import MoREConfig
from trainables.more.evaluation.suite import METRICS as EVAL_METRICS
from trainables.more.evaluation.suite import EvalSettings


@dataclass
class MoREData(DataSection):
    """Which corpus to train on (a ``trainables.data.load_text`` name), and an optional mixture."""

    dataset: str = setting("tinyshakespeare", doc="a trainables.data corpus")
    train_split: str = setting("train", doc="one of the corpus's splits")
    val_split: str = setting("validation", doc="one of the corpus's splits")
    mixture: dict[str, float] | None = setting(None, doc="training mixture (trainables.data.mixture): relative "
                                                         "weights of lm (the dataset above), babi, arithmetic; "
                                                         "null = train on the dataset alone")
    arith_train_digits: int = setting(ARITH_TRAIN_DIGITS, doc="arithmetic in the mixture: operands of 1..N digits")
    arith_ops: list[str] = setting(factory=lambda: ["+", "-"], nonempty=True, items={"one_of": OPERATORS},
                                   expect=f"a non-empty list of {', '.join(OPERATORS)}",
                                   doc="operators of training (and eval) arithmetic")
    arith_reverse: bool = setting(False, doc='write arithmetic answers least-significant digit first ("123+45=861"), '
                                             "in training and evaluation")
    arith_pad: bool = setting(False, doc='zero-pad arithmetic operands to arith_train_digits ("005+043="; longer '
                                         "evaluation problems: to their own length)")

    def arith_format(self) -> ArithmeticFormat:
        """The arithmetic format of training, which evaluation reuses."""
        return ArithmeticFormat(tuple(self.arith_ops), self.arith_reverse, self.arith_pad)

    def cross_checks(self) -> list[str]:
        from trainables.data import dataset_splits, list_datasets
        from trainables.data.mixture import mixture_errors

        errors = [e.removeprefix("data.") for e in mixture_errors(self.mixture, self.arith_train_digits)]
        known = list_datasets()
        if self.dataset not in known:
            return errors + [f"dataset: got {fmt(self.dataset)}, expected one of {', '.join(known)}"]
        splits = dataset_splits(self.dataset)
        for key in ("train_split", "val_split"):
            if getattr(self, key) not in splits:
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected one of {', '.join(splits)}")
        return errors


@dataclass
class MoREEvaluate(EvalSettings, EvaluateSection):
    """The MoRE evaluation suite (``moe-orch evaluate``; fields: ``trainables.more.evaluation.EvalSettings``)."""


def cross_checks(exp: Any) -> list[str]:
    """Arithmetic evaluation lengths must be longer than the trained ones."""
    if exp.evaluate is None:
        return []
    short = [d for d in exp.evaluate.arith_long_digits if d <= exp.data.arith_train_digits]
    if short:
        return [f"evaluate.arith_long_digits: got {short}, expected lengths > data.arith_train_digits "
                f"({exp.data.arith_train_digits})"]
    return []


FAMILY = Family(
    name="more",
    model=MoREConfig,
    data=MoREData,
    recipe="trainables.more.recipe:MoRERecipe",
    checkpoint="trainables.more.checkpoint:load_model_from",
    strategies=("ddp", "deepspeed"),
    metrics=("step", "train_loss", "val_loss", "val_perplexity", "lr", "tokens_per_s", "tokens_seen",
             "load_balance_loss", "z_loss", "train_time_s", "flops_per_step", "train_flops", "budget_steps"),
    metric_prefixes=("routing/",),
    progress=(("train_loss", "train_loss"), ("val_loss", "val_loss"), ("val_perplexity", "ppl")),
    evaluate=MoREEvaluate,
    evaluator="trainables.more.evaluation.evaluator:evaluate_checkpoint",
    eval_metrics=EVAL_METRICS,
    eval_metric_prefixes=("arith_acc_d", "wikitext_"),
    history=("routing/", ("/entropy", "/cv")),
    checks=cross_checks,
)
