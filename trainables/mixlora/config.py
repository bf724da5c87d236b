"""Configuration of the MixLoRA family: a frozen pretrained causal LM with LoRA or MixLoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.schema import Section, setting
from trainables.lm.sections import base_model_setting

METHODS = ("lora", "mixlora")
PRECISIONS = ("float32", "bfloat16")


@dataclass
class MixLoRALayerConfig(Section):
    """The layer-level MixLoRA settings, declared once: what ``MixLoRAFFN.from_mlp``,
    ``surgery.apply_mixlora`` and ``params.matched_lora_rank`` read (the family's ``MixLoRAConfig``
    extends it). Dropout and router jitter act in training only."""

    num_experts: int = setting(8, ge=1, doc="LoRA experts per FFN")
    top_k: int = setting(2, ge=1, doc="experts per token, <= num_experts")
    rank: int = setting(8, ge=1, doc="r of every MixLoRA LoRA (experts and attention)")
    alpha: float = setting(16.0, gt=0, doc="LoRA scale numerator (scale = alpha / rank)")
    dropout: float = setting(0.05, ge=0, lt=1, doc="LoRA input dropout")
    router_init_std: float = setting(0.02, ge=0, doc="std of the router's initial weights")
    router_jitter: float = setting(0.0, ge=0, doc="multiplicative router input noise, training only")
    attention_lora: bool = setting(True, doc="plain LoRA on q/k/v/o_proj too")

    def cross_checks(self) -> list[str]:
        if self.top_k > self.num_experts:
            return [f"top_k: got {self.top_k}, expected <= num_experts ({self.num_experts})"]
        return []


@dataclass
class MixLoRAConfig(MixLoRALayerConfig):
    """Every knob of one adapter run. Plain data: serialises to YAML, JSON and flat params.

    ``method``:

    - ``mixlora``: the base FFN of every decoder layer becomes ``num_experts`` experts sharing
      its frozen weights, each with its own LoRA on gate/up/down, ``top_k`` routed per token;
      ``attention_lora`` adds plain LoRA on q/k/v/o_proj (``trainables.mixlora.surgery``);
    - ``lora``: the baseline, plain peft LoRA on all seven projections; ``lora_rank`` null picks
      the rank whose trainable-parameter count matches MixLoRA's with the same settings.
    """

    base: str = base_model_setting()
    method: str = setting("mixlora", one_of=METHODS, doc="mixlora, or the plain-LoRA baseline")
    load_balance_coef: float = setting(0.01, ge=0, doc="times the unweighted Switch loss of trainables.moe.losses")
    lora_rank: int | None = setting(None, ge=1, doc="method lora: its rank; null = matched to MixLoRA's "
                                                    "trainable parameters")
    max_length: int = setting(256, ge=1, doc="tokens per training example (prompt truncated from the left)")
    precision: str = setting("float32", one_of=PRECISIONS, doc="float32 | bfloat16 (for GPUs; CPUs train in float32)")

