"""Configuration of the MoRE (Mixture of Recurrent Experts) language model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.schema import Section, setting
from trainables.moe import ACTIVATIONS

VARIANTS = ("base", "more_a", "more_b", "more_c", "more_d")
POS_ENCODINGS = ("rope", "learned")


@dataclass
class MoREConfig(Section):
    """Every knob of a MoRE model. Plain data: serialises to YAML, JSON and flat params.

    The defaults are the "default size" quoted in the README: small enough to train
    on a 2-core laptop in minutes.
    """

    variant: str = setting("base", one_of=VARIANTS, doc="see trainables/more/model.py")
    num_recurrences: int = setting(1, ge=1, doc="R: recurrence steps (more_a/b/d) or parallel branches (more_c)")
    vocab_size: int = setting(259, ge=1, doc="the byte tokenizer's vocabulary")
    block_size: int = setting(128, ge=1, doc="context length")
    n_layer: int = setting(4, ge=1, doc="transformer blocks (more_b: >= 3, prelude + core + coda)")
    n_head: int = setting(4, ge=1, doc="attention heads")
    d_model: int = setting(128, ge=1, doc="a multiple of n_head (an even head size with rope)")
    num_experts: int = setting(4, ge=1, doc="routed experts per MoE layer")
    top_k: int = setting(2, ge=1, doc="experts per token, <= num_experts")
    expert_hidden: int = setting(256, ge=1, doc="width of each expert FFN")
    activation: str = setting("swiglu", one_of=ACTIVATIONS, doc="expert activation")
    shared_expert_hidden: int = setting(0, ge=0, doc="width of an always-on shared expert; 0 = none")
    capacity_factor: float | None = setting(None, gt=0, doc="expert capacity per token share; null = dropless")
    renormalize: bool = setting(True, doc="rescale the k router weights to sum to 1")
    router_jitter: float = setting(0.0, doc="multiplicative router input noise, training only")
    pos_encoding: str = setting("rope", one_of=POS_ENCODINGS, doc="rope or learned positions")
    rope_base: float = setting(10000.0, doc="RoPE's base frequency")
    dropout: float = setting(0.0, ge=0, lt=1, doc="dropout in attention and FFNs")
    load_balance_coef: float = setting(0.01, doc="weight of the Switch load-balance loss")
    z_loss_coef: float = setting(0.001, doc="weight of the router z-loss")
    flops_budget: float | None = setting(
        None, gt=0, doc="equal-compute training: null = train.max_steps steps; else training FLOPs (3 x counted "
                        "forward FLOPs) that set each trial's steps, min(train.max_steps, floor(budget / FLOPs per "
                        "step)) (trainables/more/budget.py). Not a model knob: the model ignores it")
    extra: dict[str, Any] = setting(factory=dict, doc="free-form notes, ignored by the model")

    def cross_checks(self) -> list[str]:
        errs = []
        if self.top_k > self.num_experts:
            errs.append(f"top_k: got {self.top_k}, expected <= num_experts ({self.num_experts})")
        if self.n_head > 0:
            head_dim, rem = divmod(self.d_model, self.n_head)
            if rem:
                errs.append(f"d_model: got {self.d_model}, expected a multiple of n_head ({self.n_head})")
            elif self.pos_encoding == "rope" and head_dim % 2:
                errs.append(f"d_model: got {self.d_model}, expected an even head size for rope (d_model / n_head)")
        if self.variant == "more_b" and self.n_layer < 3:
            errs.append(f"n_layer: got {self.n_layer}, expected >= 3 for more_b (prelude + core + coda)")
        return errs
