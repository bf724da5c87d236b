"""Configuration of the DyLoRA-MoE family: a frozen pretrained causal LM with a pool of LoRA experts
that grows while a stream of skills arrives (``../shared/specs/dylora-moe.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainables.config_base import FamilyConfig, base_reference_errors

METHODS = ("dylora", "naive", "joint")
SCHEDULES = ("warmup_stable_decay", "cyclical")
MATURITY = ("steps", "plateau")
TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # the default LoRA targets


@dataclass
class DyLoRAConfig(FamilyConfig):
    """Every knob of one continual-learning run. Plain data: serialises to YAML, JSON and flat params.

    ``method``:

    - ``dylora``: the pool starts with one expert; the ``NoveltyDetector`` adds one (up to
      ``max_experts``) when the stream turns novel; the ``DynamicHybridRouter`` mixes the experts
      densely while any is immature, then delegates each sequence to one;
    - ``naive``: one LoRA expert fine-tuned on the stream in order (the forgetting baseline);
    - ``joint``: one LoRA expert on every skill of the stream mixed from the first step (the upper bound).
    """

    base: str = "tiny-llama"  # smollm2-135m-instruct | tiny-llama | a hub name | a local directory
    method: str = "dylora"
    max_experts: int = 4  # slots allocated up front (DDP fixes the parameter set when it wraps the model)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(TARGETS))
    freeze_old_experts: bool = True  # a new expert freezes the older ones (else they keep consolidating)
    # router: cosine similarity of a prompt's pooled embedding to each expert's prototype / temperature
    router_temperature: float = 0.05
    prototype_momentum: float = 0.9  # EMA of an expert's prototype over the batches routed to it
    maturity: str = "steps"  # steps: mature after maturity_steps; plateau: also when its loss stops falling
    maturity_steps: int = 40
    plateau_window: int = 10
    plateau_tolerance: float = 0.01  # relative improvement below this over a window counts as a plateau
    # novelty detector (trainables.dylora.novelty)
    single_expert_criterion: str = "prototype"  # one expert: prototype | loss
    multi_expert_criterion: str = "entropy"  # two or more: entropy (the spec's) | prototype
    distance_threshold: float = 0.0065  # prototype: cosine distance of the window's mean feature to the nearest
    entropy_threshold: float = 0.6  # normalised router entropy H / log E above this is novel (E >= 2)
    loss_z_threshold: float = 3.0  # one expert: |z| of the loss change between two windows above this is novel
    detector_window: int = 8  # steps per window
    detector_patience: int = 1  # novel windows in a row before an expert is added
    cooldown_steps: int = 20  # no novelty decision within this many steps of an expert's birth
    # two-phase learning rate, as multipliers of train.lr
    seed_steps: int = 20  # a new expert's high-rate seeding
    seed_lr_multiplier: float = 5.0  # peak of the seeding phase
    seed_warmup_steps: int = 4
    seed_schedule: str = "warmup_stable_decay"  # or cyclical (triangular cycles of seed_cycle_steps)
    seed_cycle_steps: int = 10
    consolidation_lr_multiplier: float = 1.0  # after seeding
    max_length: int = 192  # tokens per training example (prompt truncated from the left)

    def errors(self) -> list[str]:
        errs = []
        if self.method not in METHODS:
            errs.append(f"method: got {self.method!r}, expected one of {', '.join(METHODS)}")
        errs += base_reference_errors(self.base)
        for name in ("max_experts", "rank", "max_length", "maturity_steps", "plateau_window", "detector_window",
                     "detector_patience", "seed_steps", "seed_cycle_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errs.append(f"{name}: got {value!r}, expected an integer >= 1")
        for name in ("cooldown_steps", "seed_warmup_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                errs.append(f"{name}: got {value!r}, expected an integer >= 0")
        known = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
        if not self.target_modules or any(m not in known for m in self.target_modules):
            errs.append(f"target_modules: got {list(self.target_modules)!r}, expected some of {', '.join(known)}")
        if self.seed_schedule not in SCHEDULES:
            errs.append(f"seed_schedule: got {self.seed_schedule!r}, expected one of {', '.join(SCHEDULES)}")
        if self.single_expert_criterion not in ("prototype", "loss"):
            errs.append(f"single_expert_criterion: got {self.single_expert_criterion!r}, expected prototype or loss")
        if self.multi_expert_criterion not in ("entropy", "prototype"):
            errs.append(f"multi_expert_criterion: got {self.multi_expert_criterion!r}, expected entropy or prototype")
        if self.maturity not in MATURITY:
            errs.append(f"maturity: got {self.maturity!r}, expected one of {', '.join(MATURITY)}")
        for name in ("alpha", "router_temperature", "seed_lr_multiplier", "consolidation_lr_multiplier",
                     "loss_z_threshold", "distance_threshold"):
            if not getattr(self, name) > 0:
                errs.append(f"{name}: got {getattr(self, name)!r}, expected > 0")
        if not 0.0 < self.entropy_threshold < 1.0:
            errs.append(f"entropy_threshold: got {self.entropy_threshold!r}, expected 0 < threshold < 1")
        for name in ("dropout", "prototype_momentum"):
            if not 0.0 <= getattr(self, name) < 1.0:
                errs.append(f"{name}: got {getattr(self, name)!r}, expected 0 <= value < 1")
        if self.plateau_tolerance < 0:
            errs.append(f"plateau_tolerance: got {self.plateau_tolerance!r}, expected >= 0")
        if isinstance(self.seed_warmup_steps, int) and isinstance(self.seed_steps, int) \
                and self.seed_warmup_steps > self.seed_steps:
            errs.append(f"seed_warmup_steps: got {self.seed_warmup_steps}, expected <= seed_steps ({self.seed_steps})")
        return errs

    @property
    def grows(self) -> bool:
        """Whether the pool may grow (the ``dylora`` method); the baselines keep one expert."""
        return self.method == "dylora"
