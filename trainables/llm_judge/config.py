"""The LLM-judge MoE's ``model:`` section: the experts' backend, their random configs, the judges, and
the value learning (the tutorial's names and defaults, ``../shared/specs/llm-judge-moe.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.schema import fmt
from trainables.config_base import FamilyConfig

BACKENDS = ("local", "openai")
REWARDS = ("ground_truth", "random")


@dataclass
class JudgeConfig(FamilyConfig):
    """Experts, judges and value learning.

    ``backend: local`` loads each name in ``models`` (an LM base such as ``smollm2-135m-instruct``,
    or an LM-family checkpoint directory) once, in a Ray actor; ``backend: openai`` sends them as
    model names to ``base_url`` with the key from the env var ``api_key_env`` (OpenRouter, vLLM,
    a llama.cpp server, ``moe-orch serve`` of an LM family).
    """

    backend: str = "local"
    models: list[str] = field(default_factory=lambda: ["smollm2-135m-instruct"])
    base_url: str | None = None  # openai: e.g. https://openrouter.ai/api/v1 or http://127.0.0.1:8000/v1
    api_key_env: str = "OPENAI_API_KEY"  # openai: the env var holding the key ("" or unset: no key)
    local_cpus: float = 1.0  # local: CPUs each model's actor holds (and its torch threads)

    # the experts: random generation configs, seeded by train.seed
    num_experts: int = 4
    experts_per_query: int | None = None  # experts that answer each question (None = all); epsilon-greedy on values
    temperature_range: list[float] = field(default_factory=lambda: [0.7, 1.2])
    top_p_range: list[float] = field(default_factory=lambda: [0.8, 1.0])
    frequency_penalty_range: list[float] = field(default_factory=lambda: [0.0, 0.5])
    presence_penalty_range: list[float] = field(default_factory=lambda: [0.0, 0.5])
    max_tokens: int = 200  # per expert answer (and per continuation)
    complete_output: bool = True  # an answer not ending in . ! ? is continued once

    # the judges: the gating model scores candidates, the reward model labels the chosen one
    n_judge: int = 3
    judge_max_tokens: int = 16
    judge_retries: int = 3  # re-asks after a reply with no score in [0, 1]; then that judge fails

    # value learning (the tutorial's MixtureOfExperts)
    min_iterations: int = 3
    learning_rate: float = 0.1
    discount_factor: float = 0.95
    exploration_rate: float = 0.2  # epsilon before the schedule max(0.1, 1 - it / min_iterations) takes over
    reward_threshold: float = 10.0  # stop once it >= min_iterations and the summed total reward reaches this
    repetition_rule: bool = True  # the tutorial's: an expert selected before is credited as a random one
    external_reward: str = "ground_truth"  # or "random": the tutorial's uniform(0.3, 1) stand-in

    # calls
    max_concurrency: int = 16  # calls in flight at once (all experts and judges of an iteration)
    timeout_s: float = 120.0  # per call
    retries: int = 2  # per call, after a timeout or an error, with exponential backoff
    backoff_s: float = 1.0

    def errors(self) -> list[str]:
        errors = []
        if self.backend not in BACKENDS:
            errors.append(f"backend: got {fmt(self.backend)}, expected one of {', '.join(BACKENDS)}")
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            errors.append(f"models: got {fmt(self.models)}, expected a non-empty list of model names")
        if self.backend == "openai" and not self.base_url:
            errors.append("base_url: got null, expected the endpoint's URL with backend 'openai' "
                          "(e.g. http://127.0.0.1:8000/v1)")
        if self.external_reward not in REWARDS:
            errors.append(f"external_reward: got {fmt(self.external_reward)}, expected one of {', '.join(REWARDS)}")
        for key in ("num_experts", "max_tokens", "n_judge", "judge_max_tokens", "min_iterations", "max_concurrency"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected an integer >= 1")
        for key in ("judge_retries", "retries"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 0):
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected an integer >= 0")
        if self.experts_per_query is not None and not (
                isinstance(self.experts_per_query, int) and 1 <= self.experts_per_query <= max(1, self.num_experts)):
            errors.append(f"experts_per_query: got {fmt(self.experts_per_query)}, expected null or "
                          f"1..num_experts ({self.num_experts})")
        for key, low, high in (("temperature_range", 0.0, 2.0), ("top_p_range", 0.0, 1.0),
                               ("frequency_penalty_range", -2.0, 2.0), ("presence_penalty_range", -2.0, 2.0)):
            value = getattr(self, key)
            if not (isinstance(value, list | tuple) and len(value) == 2
                    and all(isinstance(v, int | float) for v in value) and low <= value[0] <= value[1] <= high):
                errors.append(f"{key}: got {fmt(value)}, expected [low, high] with {low} <= low <= high <= {high}")
        if self.top_p_range and isinstance(self.top_p_range[0], int | float) and self.top_p_range[0] <= 0:
            errors.append(f"top_p_range: got {fmt(self.top_p_range)}, expected low > 0")
        for key in ("learning_rate", "discount_factor", "exploration_rate"):
            if not 0 <= getattr(self, key) <= 1:
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected 0 <= x <= 1")
        for key in ("timeout_s", "local_cpus"):
            if not getattr(self, key) > 0:
                errors.append(f"{key}: got {fmt(getattr(self, key))}, expected > 0")
        if self.backoff_s < 0:
            errors.append(f"backoff_s: got {fmt(self.backoff_s)}, expected >= 0")
        return errors
