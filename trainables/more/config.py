"""Configuration of the MoRE (Mixture of Recurrent Experts) language model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainables.config_base import FamilyConfig
from trainables.moe import ACTIVATIONS

VARIANTS = ("base", "more_a", "more_b", "more_c", "more_d")
POS_ENCODINGS = ("rope", "learned")


@dataclass
class MoREConfig(FamilyConfig):
    """Every knob of a MoRE model. Plain data: serialises to YAML, JSON and flat params.

    The defaults are the "default size" quoted in the README: small enough to train
    on a 2-core laptop in minutes.
    """

    variant: str = "base"  # one of VARIANTS, see trainables/more/model.py
    num_recurrences: int = 1  # R: recurrence steps (more_a/b/d) or parallel branches (more_c)
    vocab_size: int = 259  # the byte tokenizer's vocabulary
    block_size: int = 128  # context length
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    num_experts: int = 4
    top_k: int = 2
    expert_hidden: int = 256  # width of each expert FFN
    activation: str = "swiglu"  # "swiglu" | "gelu"
    shared_expert_hidden: int = 0  # 0 = no shared expert
    capacity_factor: float | None = None  # None = dropless
    renormalize: bool = True  # rescale the k router weights to sum to 1
    router_jitter: float = 0.0  # multiplicative router input noise, training only
    pos_encoding: str = "rope"  # "rope" | "learned"
    rope_base: float = 10000.0
    dropout: float = 0.0
    load_balance_coef: float = 0.01
    z_loss_coef: float = 0.001
    # equal-compute training: null = train.max_steps steps; else training FLOPs (3 x counted forward FLOPs)
    # that set each trial's steps, min(train.max_steps, floor(budget / FLOPs per step)) (trainables/more/budget.py).
    # Not a model knob: the model ignores it.
    flops_budget: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes, ignored by the model

    def errors(self) -> list[str]:
        """Every problem with this config, one ``field: got X, expected Y`` line each."""
        errs = []
        if self.variant not in VARIANTS:
            errs.append(f"variant: got {self.variant!r}, expected one of {', '.join(VARIANTS)}")
        if self.activation not in ACTIVATIONS:
            errs.append(f"activation: got {self.activation!r}, expected one of {', '.join(ACTIVATIONS)}")
        if self.pos_encoding not in POS_ENCODINGS:
            errs.append(f"pos_encoding: got {self.pos_encoding!r}, expected one of {', '.join(POS_ENCODINGS)}")
        for name in (
            "num_recurrences",
            "vocab_size",
            "block_size",
            "n_layer",
            "n_head",
            "d_model",
            "num_experts",
            "top_k",
            "expert_hidden",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                errs.append(f"{name}: got {value!r}, expected an integer >= 1")
        if isinstance(self.top_k, int) and isinstance(self.num_experts, int) and self.top_k > self.num_experts:
            errs.append(f"top_k: got {self.top_k}, expected <= num_experts ({self.num_experts})")
        if isinstance(self.d_model, int) and isinstance(self.n_head, int) and self.n_head > 0:
            head_dim, rem = divmod(self.d_model, self.n_head)
            if rem:
                errs.append(f"d_model: got {self.d_model}, expected a multiple of n_head ({self.n_head})")
            elif self.pos_encoding == "rope" and head_dim % 2:
                errs.append(f"d_model: got {self.d_model}, expected an even head size for rope (d_model / n_head)")
        if self.variant == "more_b" and isinstance(self.n_layer, int) and self.n_layer < 3:
            errs.append(f"n_layer: got {self.n_layer}, expected >= 3 for more_b (prelude + core + coda)")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            errs.append(f"capacity_factor: got {self.capacity_factor!r}, expected null or a number > 0")
        if self.shared_expert_hidden < 0:
            errs.append(f"shared_expert_hidden: got {self.shared_expert_hidden}, expected >= 0")
        if self.flops_budget is not None and (isinstance(self.flops_budget, bool) or not self.flops_budget > 0):
            errs.append(f"flops_budget: got {self.flops_budget!r}, expected null or a number > 0")
        if not 0.0 <= self.dropout < 1.0:
            errs.append(f"dropout: got {self.dropout}, expected 0 <= dropout < 1")
        return errs
