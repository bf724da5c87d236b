"""The LLM-judge MoE's ``model:`` section: the experts' backend, their random configs, the judges, and
the value learning (the tutorial's names and defaults, ``../shared/specs/llm-judge-moe.md``)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.schema import Section, fmt, setting

BACKENDS = ("local", "openai")
REWARDS = ("ground_truth", "random")
SCORINGS = ("text", "logprobs")


@dataclass
class JudgeConfig(Section):
    """Experts, judges and value learning.

    ``backend: local`` loads each name in ``models`` (an LM base such as ``smollm2-135m-instruct``,
    or an LM-family checkpoint directory) once, in a Ray actor; ``backend: openai`` sends them as
    model names to ``base_url`` with the key from the env var ``api_key_env`` (OpenRouter, vLLM,
    a llama.cpp server, ``moe-orch serve`` of an LM family).
    """

    backend: str = setting("local", one_of=BACKENDS, doc="local: Ray actors load the models; openai: an "
                                                         "OpenAI-compatible endpoint")
    models: list[str] = setting(factory=lambda: ["smollm2-135m-instruct"], nonempty=True,
                                items={"nonempty": True, "expect": "a model name"},
                                expect="a non-empty list of model names", doc="the LLMs the experts sample from")
    base_url: str | None = setting(None, doc="openai: e.g. https://openrouter.ai/api/v1 or http://127.0.0.1:8000/v1")
    api_key_env: str = setting("OPENAI_API_KEY", doc='openai: the env var holding the key ("" or unset: no key)')
    local_cpus: float = setting(1.0, gt=0, doc="local: CPUs each model's actor holds (and its torch threads)")
    local_gpus: float = setting(0.0, ge=0, doc="local: GPUs each model's actor holds (a fraction shares one); > 0: "
                                               "its model runs on CUDA in bfloat16 (outside Ray: on this process's "
                                               "GPU); 0 = CPU")

    # the experts: random generation configs, seeded by train.seed
    num_experts: int = setting(4, ge=1, doc="experts, each a random generation config (seeded by train.seed)")
    experts_per_query: int | None = setting(None, doc="experts that answer each question (null = all), "
                                                      "1..num_experts; epsilon-greedy on values")
    temperature_range: list[float] = setting(factory=lambda: [0.7, 1.2], doc="[low, high] within 0..2")
    top_p_range: list[float] = setting(factory=lambda: [0.8, 1.0], doc="[low, high] within 0..1, low > 0")
    frequency_penalty_range: list[float] = setting(factory=lambda: [0.0, 0.5], doc="[low, high] within -2..2")
    presence_penalty_range: list[float] = setting(factory=lambda: [0.0, 0.5], doc="[low, high] within -2..2")
    max_tokens: int = setting(200, ge=1, doc="per expert answer (and per continuation)")
    complete_output: bool = setting(True, doc="an answer not ending in . ! ? is continued once")

    # the judges: the gating model scores candidates, the reward model labels the chosen one
    n_judge: int = setting(3, ge=1, doc="judges whose scores are averaged")
    judge_max_tokens: int = setting(16, ge=1, doc="tokens per judge reply")
    judge_retries: int = setting(3, ge=0, doc="re-asks after a reply with no score in [0, 1]; then that judge fails")
    judge_scoring: str = setting("text", one_of=SCORINGS,
                                 doc="text: a number parsed from the reply; logprobs: G-Eval's expected digit 0..9 "
                                     "from the judge's top_logprobs (needs an endpoint that returns them)")
    judge_top_logprobs: int = setting(20, ge=1, le=20, doc="logprobs: alternatives per position (OpenAI allows 20)")

    # value learning (the tutorial's MixtureOfExperts)
    min_iterations: int = setting(3, ge=1, doc="iterations before the reward threshold can stop learning")
    learning_rate: float = setting(0.1, ge=0, le=1, doc="TD step size of the expert values")
    discount_factor: float = setting(0.95, ge=0, le=1, doc="TD discount")
    exploration_rate: float = setting(0.2, ge=0, le=1, doc="epsilon before the schedule max(0.1, 1 - it / "
                                                           "min_iterations) takes over")
    reward_threshold: float = setting(10.0, doc="stop once it >= min_iterations and the summed total reward "
                                                "reaches this")
    repetition_rule: bool = setting(True, doc="the tutorial's: an expert selected before is credited as a "
                                              "random one")
    external_reward: str = setting("ground_truth", one_of=REWARDS, doc='or "random": the tutorial\'s '
                                                                       "uniform(0.3, 1) stand-in")

    # calls
    max_concurrency: int = setting(16, ge=1, doc="calls in flight at once (all experts and judges of an iteration)")
    timeout_s: float = setting(120.0, gt=0, doc="per call")
    retries: int = setting(2, ge=0, doc="per call, after a timeout or an error, with exponential backoff")
    backoff_s: float = setting(1.0, ge=0, doc="the first backoff")

    def cross_checks(self) -> list[str]:
        errors = []
        if self.backend == "openai" and not self.base_url:
            errors.append("base_url: got null, expected the endpoint's URL with backend 'openai' "
                          "(e.g. http://127.0.0.1:8000/v1)")
        if self.experts_per_query is not None and not 1 <= self.experts_per_query <= max(1, self.num_experts):
            errors.append(f"experts_per_query: got {fmt(self.experts_per_query)}, expected null or "
                          f"1..num_experts ({self.num_experts})")
        for key, low, high in (("temperature_range", 0.0, 2.0), ("top_p_range", 0.0, 1.0),
                               ("frequency_penalty_range", -2.0, 2.0), ("presence_penalty_range", -2.0, 2.0)):
            value = getattr(self, key)
            if not (len(value) == 2 and low <= value[0] <= value[1] <= high):
                errors.append(f"{key}: got {fmt(value)}, expected [low, high] with {low} <= low <= high <= {high}")
        if self.top_p_range and self.top_p_range[0] <= 0:
            errors.append(f"top_p_range: got {fmt(self.top_p_range)}, expected low > 0")
        return errors
