"""The DyLoRA-MoE family's declaration (``orchestrator.contract.Family``): a pool of LoRA experts on a frozen
pretrained causal LM, grown at run time while a stream of Code Alpaca skills arrives without labels, and
measured for forgetting (accuracy matrix, forgetting, BWT, FWT) and MBPP / HumanEval pass@k after every
phase. Registered in ``orchestrator/registry.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.contract import DataSection, EvaluateSection, Family
from orchestrator.schema import fmt, setting
from trainables.dylora.config import DyLoRAConfig
from trainables.dylora.stream import SKILLS
from trainables.lm.sections import LMServe


@dataclass
class StreamData(DataSection):
    """The stream: ``phases`` in order (a skill and its optimizer steps each), held-out examples per skill."""

    phases: list[dict[str, Any]] = setting(factory=lambda: [{"skill": "python_basics", "steps": 40},
                                                            {"skill": "web_requests", "steps": 40}],
                                           nonempty=True, expect="a list of {skill, steps}",
                                           doc=f"the skills in order, each {{skill: <one of {', '.join(SKILLS)}>, "
                                               "steps: <optimizer steps>}")
    heldout: int = setting(24, ge=1, le=64, expect="1..64", doc="per skill, never trained on: held-out loss, "
                                                                "perplexity and token accuracy")
    heldout_seed: int | None = setting(None, ge=0, doc="seed of the held-out split; null = train.seed. Fixed, every "
                                                       "seed's run is scored on the same examples, which "
                                                       "`moe-orch compare --task cl` pairs")
    max_train_examples: int | None = setting(None, ge=1, doc="per skill; null = all that remain after the "
                                                             "held-out split")
    skills: dict[str, str] = setting(factory=dict, doc="your own skills, {name: path.jsonl} of {instruction, "
                                                       "output[, input]} records, usable in phases beside the "
                                                       "built-in ones (a relative path: from where the command runs)")

    def __post_init__(self) -> None:
        # Made absolute where the experiment is loaded (the driver), like ``root``: Ray Train workers run in
        # their own working directory, where a relative path would name nothing.
        if isinstance(self.skills, dict):
            self.skills = {name: str(Path(path).expanduser().absolute()) if isinstance(path, str) and path.strip()
                           else path for name, path in self.skills.items()}

    def cross_checks(self) -> list[str]:
        errors = []
        known = list(dict.fromkeys([*SKILLS, *self.skills]))  # a file for a built-in name is its own error
        for name, path in self.skills.items():
            if name in SKILLS:
                errors.append(f"skills.{name}: got a file for a built-in skill, expected a new name")
            elif not isinstance(path, str) or not Path(path).is_file():
                errors.append(f"skills.{name}: got {fmt(path)}, expected a JSON-lines file (not found)")
        for i, phase in enumerate(self.phases):
            if not isinstance(phase, dict) or set(phase) != {"skill", "steps"}:
                errors.append(f"phases[{i}]: got {fmt(phase)}, expected {{skill: <name>, steps: <int>}}")
                continue
            if phase["skill"] not in known:
                errors.append(f"phases[{i}].skill: got {fmt(phase['skill'])}, expected one of {', '.join(known)}")
            if not isinstance(phase["steps"], int) or isinstance(phase["steps"], bool) or phase["steps"] < 1:
                errors.append(f"phases[{i}].steps: got {fmt(phase['steps'])}, expected an integer >= 1")
        return errors

    @property
    def phase_list(self) -> list[tuple[str, int]]:
        return [(p["skill"], p["steps"]) for p in self.phases]


@dataclass
class CodeEvalSection(EvaluateSection):
    """MBPP (test split, task ids 11-510, the first ``mbpp_limit``) and HumanEval (the first
    ``humaneval_limit``) pass@k, scored at the start and after every phase during training.

    ``n_samples`` 1 is greedy decoding (pass@1); more samples at ``temperature`` give pass@k for
    each k in ``k`` up to ``n_samples`` (the unbiased estimator). No repetition penalty, ever.
    """

    mbpp_limit: int = setting(20, ge=0, doc="MBPP problems; 0 = skip MBPP")
    humaneval_limit: int = setting(20, ge=0, doc="HumanEval problems; 0 = skip HumanEval")
    n_samples: int = setting(1, ge=1, doc="samples per problem (1 = greedy)")
    k: list[int] = setting(factory=lambda: [1], doc="the k of each pass@k, in 1..n_samples")
    temperature: float = setting(0.8, gt=0, doc="used when n_samples > 1")
    max_new_tokens: int = setting(128, ge=1, doc="tokens per program")
    batch_size: int = setting(8, ge=1, doc="prompts decoded together")
    timeout_s: float = setting(10.0, gt=0, doc="per program, in the sandbox")
    memory_mb: int = setting(1024, ge=1, doc="per program, in the sandbox")
    rescore: bool = setting(False, doc="the evaluator (evaluate.at_end, moe-orch evaluate) scores the code "
                                       "benchmarks of the checkpoint again with these settings, e.g. n_samples=5 "
                                       "k=[1,5] for pass@5 (eval/<bench>/pass_at_<k>)")

    def cross_checks(self) -> list[str]:
        if not self.k or any(not 1 <= k <= max(1, self.n_samples) for k in self.k):
            return [f"k: got {fmt(self.k)}, expected integers in 1..n_samples ({self.n_samples})"]
        return []


def _stream_checks(exp: Any) -> list[str]:
    """train.max_steps = the stream's steps; reports (train.eval_every) fall on every phase end."""
    phases = exp.data.phase_list
    total = sum(steps for _, steps in phases)
    errors = []
    if exp.train.max_steps != total:
        errors.append(f"train.max_steps: got {exp.train.max_steps}, expected {total} (the sum of data.phases steps)")
    ends, acc = [], 0
    for _, steps in phases:
        acc += steps
        ends.append(acc)
    if any(end % exp.train.eval_every for end in ends):
        errors.append(f"train.eval_every: got {exp.train.eval_every}, expected a divisor of every phase end "
                      f"({', '.join(map(str, ends))}): each phase ends with an evaluation")
    if exp.model.method != "joint" and exp.data.max_train_examples is not None \
            and exp.data.max_train_examples < exp.train.batch_size:
        errors.append(f"data.max_train_examples: got {exp.data.max_train_examples}, expected >= train.batch_size")
    if exp.model.grows and exp.model.max_experts < 2:
        errors.append(f"model.max_experts: got {exp.model.max_experts}, expected >= 2 for method dylora")
    return errors


FAMILY = Family(
    name="dylora",
    model=DyLoRAConfig,
    data=StreamData,
    recipe="trainables.dylora.recipe:DyLoRARecipe",
    checkpoint="trainables.dylora.checkpoint:load_model_from",
    strategies=("ddp",),
    metrics=("step", "train_loss", "lr", "tokens_per_s", "tokens_seen", "train_time_s", "phase",
             "val_loss", "router_entropy"),
    metric_prefixes=("skill/", "dylora/", "lr/", "mbpp/", "humaneval/", "registry/", "cl/"),
    progress=(("train_loss", "train_loss"), ("val_loss", "heldout_loss"), ("dylora/num_experts", "experts")),
    evaluate=CodeEvalSection,
    evaluator="trainables.dylora.evaluation:evaluate_checkpoint",
    eval_metrics=("eval_time_s",),
    eval_metric_prefixes=("cl/", "eval/"),
    checks=_stream_checks,
    weights=("fp32", "int8", "int4"),  # the evaluator's rescore (its phase scores are the run's own, in float32)
    devices=("cpu", "cuda"),  # the rescore and LMEndpoint: bfloat16 on cuda (trainables.lm.base.to_device)
    serve=LMServe,
    endpoint="trainables.lm.serving:LMEndpoint",
)
