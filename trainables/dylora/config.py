"""Configuration of the DyLoRA-MoE family: a frozen pretrained causal LM with a pool of LoRA experts
that grows while a stream of skills arrives (``../shared/specs/dylora-moe.md``)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.schema import Section, setting
from trainables.lm.sections import base_model_setting

METHODS = ("dylora", "naive", "replay", "joint")
SCHEDULES = ("warmup_stable_decay", "cyclical")
MATURITY = ("steps", "plateau")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the default LoRA targets


@dataclass
class DyLoRAConfig(Section):
    """Every knob of one continual-learning run. Plain data: serialises to YAML, JSON and flat params.

    ``method``:

    - ``dylora``: the pool starts with one expert; the ``NoveltyDetector`` adds one (up to
      ``max_experts``) when the stream turns novel; the ``DynamicHybridRouter`` mixes the experts
      densely while any is immature, then delegates each sequence to one;
    - ``naive``: one LoRA expert fine-tuned on the stream in order (the forgetting baseline);
    - ``replay``: as ``naive``, with ``replay_fraction`` of every batch drawn from the earlier phases'
      skills (the seed's 80/20 mixture of new and old data);
    - ``joint``: one LoRA expert on every skill of the stream mixed from the first step (the upper bound).
    """

    base: str = base_model_setting()
    method: str = setting("dylora", one_of=METHODS, doc="dylora, or the naive / replay / joint baselines")
    replay_fraction: float = setting(0.2, ge=0, lt=1, doc="replay: the share of each batch from earlier skills "
                                                          "(the seed's 80/20)")
    max_experts: int = setting(4, ge=1, doc="slots allocated up front (DDP fixes the parameter set when it wraps "
                                            "the model)")
    rank: int = setting(8, ge=1, doc="r of every LoRA expert")
    alpha: float = setting(16.0, gt=0, doc="LoRA scale numerator (scale = alpha / rank)")
    dropout: float = setting(0.0, ge=0, lt=1, doc="LoRA input dropout")
    target_modules: list[str] = setting(factory=lambda: list(TARGETS), some_of=PROJECTIONS,
                                        doc="the projections that get LoRA experts")
    freeze_old_experts: bool = setting(True, doc="a new expert freezes the older ones (else they keep "
                                                 "consolidating)")
    router_temperature: float = setting(0.05, gt=0, doc="router: cosine similarity of a prompt's pooled embedding "
                                                        "to each expert's prototype / temperature")
    prototype_momentum: float = setting(0.9, ge=0, lt=1, doc="EMA of an expert's prototype over the batches "
                                                             "routed to it")
    maturity: str = setting("steps", one_of=MATURITY, doc="steps: mature after maturity_steps; plateau: also when "
                                                          "its loss stops falling")
    maturity_steps: int = setting(40, ge=1, doc="steps until an expert is mature")
    plateau_window: int = setting(10, ge=1, doc="steps per plateau window")
    plateau_tolerance: float = setting(0.01, ge=0, doc="relative improvement below this over a window counts as "
                                                       "a plateau")
    single_expert_criterion: str = setting("prototype", one_of=("prototype", "loss"),
                                           doc="novelty detector (trainables.dylora.novelty) with one expert")
    multi_expert_criterion: str = setting("entropy", one_of=("entropy", "prototype"),
                                          doc="with two or more: entropy (the spec's) | prototype")
    distance_threshold: float = setting(0.0065, gt=0, doc="prototype: cosine distance of the window's mean feature "
                                                          "to the nearest")
    entropy_threshold: float = setting(0.6, gt=0, lt=1, doc="normalised router entropy H / log E above this is "
                                                            "novel (E >= 2)")
    loss_z_threshold: float = setting(3.0, gt=0, doc="one expert: |z| of the loss change between two windows "
                                                     "above this is novel")
    detector_window: int = setting(8, ge=1, doc="steps per window")
    detector_patience: int = setting(1, ge=1, doc="novel windows in a row before an expert is added")
    cooldown_steps: int = setting(20, ge=0, doc="no novelty decision within this many steps of an expert's birth")
    seed_steps: int = setting(20, ge=1, doc="a new expert's high-rate seeding (multipliers of train.lr from here)")
    seed_lr_multiplier: float = setting(5.0, gt=0, doc="peak of the seeding phase")
    seed_warmup_steps: int = setting(4, ge=0, doc="warmup of the seeding phase, <= seed_steps")
    seed_schedule: str = setting("warmup_stable_decay", one_of=SCHEDULES,
                                 doc="or cyclical (triangular cycles of seed_cycle_steps)")
    seed_cycle_steps: int = setting(10, ge=1, doc="steps per cycle of the cyclical schedule")
    consolidation_lr_multiplier: float = setting(1.0, gt=0, doc="after seeding")
    max_length: int = setting(192, ge=1, doc="tokens per training example (prompt truncated from the left)")

    def cross_checks(self) -> list[str]:
        if self.seed_warmup_steps > self.seed_steps:
            return [f"seed_warmup_steps: got {self.seed_warmup_steps}, expected <= seed_steps ({self.seed_steps})"]
        return []

    @property
    def grows(self) -> bool:
        """Whether the pool may grow (the ``dylora`` method); the baselines keep one expert."""
        return self.method == "dylora"
