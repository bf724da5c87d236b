"""MoRE evaluation (torch only): WikiText-2 perplexity, bAbI 2/3, arithmetic, generation, routing.

``run_suite`` runs them on one model; ``orchestrator.evaluate`` drives it from a
checkpoint or an MLflow run and logs the results.
"""

from trainables.more.evaluation.arithmetic import evaluate_arithmetic, greedy_answers, held_out_problems
from trainables.more.evaluation.babi import candidate_answers, evaluate_babi, rank_candidates
from trainables.more.evaluation.generation import generation_sample
from trainables.more.evaluation.perplexity import PerplexityResult, sliding_window_perplexity, window_plan
from trainables.more.evaluation.routing import RoutingTrace, expert_load, routing_trace
from trainables.more.evaluation.scoring import accuracy, exact_match, normalize_answer, perplexity
from trainables.more.evaluation.suite import ARTIFACTS, TASKS, EvalSettings, run_suite

__all__ = [
    "ARTIFACTS",
    "TASKS",
    "EvalSettings",
    "PerplexityResult",
    "RoutingTrace",
    "accuracy",
    "candidate_answers",
    "evaluate_arithmetic",
    "evaluate_babi",
    "exact_match",
    "expert_load",
    "generation_sample",
    "greedy_answers",
    "held_out_problems",
    "normalize_answer",
    "perplexity",
    "rank_candidates",
    "routing_trace",
    "run_suite",
    "sliding_window_perplexity",
    "window_plan",
]
