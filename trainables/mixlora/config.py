"""Configuration of the MixLoRA family: a frozen pretrained causal LM with LoRA or MixLoRA adapters."""

from __future__ import annotations

from dataclasses import dataclass

from trainables.config_base import FamilyConfig, base_reference_errors

METHODS = ("lora", "mixlora")
PRECISIONS = ("float32", "bfloat16")


@dataclass
class MixLoRAConfig(FamilyConfig):
    """Every knob of one adapter run. Plain data: serialises to YAML, JSON and flat params.

    ``method``:

    - ``mixlora``: the base FFN of every decoder layer becomes ``num_experts`` experts sharing
      its frozen weights, each with its own LoRA on gate/up/down, ``top_k`` routed per token;
      ``attention_lora`` adds plain LoRA on q/k/v/o_proj (``trainables.mixlora.layer``);
    - ``lora``: the baseline, plain peft LoRA on all seven projections; ``lora_rank`` null picks
      the rank whose trainable-parameter count matches MixLoRA's with the same settings.
    """

    base: str = "tiny-llama"  # smollm2-135m-instruct | tiny-llama | a hub name | a local directory
    method: str = "mixlora"
    num_experts: int = 8
    top_k: int = 2
    rank: int = 8  # r of every MixLoRA LoRA (experts and attention)
    alpha: float = 16.0
    dropout: float = 0.05
    router_init_std: float = 0.02
    router_jitter: float = 0.0
    attention_lora: bool = True
    load_balance_coef: float = 0.01  # times the unweighted Switch loss of trainables.moe.losses
    lora_rank: int | None = None  # method lora: its rank; null = matched to MixLoRA's trainable parameters
    max_length: int = 256  # tokens per training example (prompt truncated from the left)
    precision: str = "float32"  # float32 | bfloat16 (for GPUs; CPUs train in float32)

    def errors(self) -> list[str]:
        errs = []
        if self.method not in METHODS:
            errs.append(f"method: got {self.method!r}, expected one of {', '.join(METHODS)}")
        errs += base_reference_errors(self.base)
        for name in ("num_experts", "top_k", "rank", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                errs.append(f"{name}: got {value!r}, expected an integer >= 1")
        if isinstance(self.top_k, int) and isinstance(self.num_experts, int) and self.top_k > self.num_experts:
            errs.append(f"top_k: got {self.top_k}, expected <= num_experts ({self.num_experts})")
        if self.precision not in PRECISIONS:
            errs.append(f"precision: got {self.precision!r}, expected one of {', '.join(PRECISIONS)}")
        if self.lora_rank is not None and self.lora_rank < 1:
            errs.append(f"lora_rank: got {self.lora_rank}, expected null or >= 1")
        if not self.alpha > 0:
            errs.append(f"alpha: got {self.alpha}, expected > 0")
        if not 0.0 <= self.dropout < 1.0:
            errs.append(f"dropout: got {self.dropout}, expected 0 <= dropout < 1")
        for name in ("router_init_std", "router_jitter", "load_balance_coef"):
            if not getattr(self, name) >= 0:
                errs.append(f"{name}: got {getattr(self, name)}, expected >= 0")
        return errs
