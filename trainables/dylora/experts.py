"""The expert pool of DyLoRA-MoE: LoRA experts on a frozen causal LM, added while training runs.

``DyLoRAModel(base, cfg)`` replaces every ``cfg.target_modules`` linear of every decoder layer with
a ``LoRAExpertLinear``: the frozen base linear plus ``max_experts`` LoRA slots::

    y = W x + (alpha / r) * sum_e w[b, e] * B_e (A_e x)       x (B, T, d_in), w (B, E) from the router

``ExpertManager`` owns the pool's lifecycle: which slots are active, when each was born, which are
frozen, and when each is mature. All ``max_experts`` slots exist from the start, each slot's
parameters a separate tensor in its own optimizer param group (``param_groups``): DDP fixes the
set of parameters it synchronises when it wraps the model, so "adding an expert" activates the next
slot: a fresh seeded initialisation (A Kaiming-uniform, B zero: the new expert starts as a no-op),
a prototype in the router, and its param group's LR switched on by the ``TwoPhaseLRScheduler``.
Frozen experts keep their weights exactly (LR 0); unborn slots take no part in the forward.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainables.dylora.config import DyLoRAConfig
from trainables.dylora.router import DynamicHybridRouter, pooled_features
from trainables.lm.base import decoder_layers

IGNORE = -100


def template_lengths(tokenizer: Any) -> tuple[int, int]:
    """``(before, after)``: how many tokens the chat template puts around a user turn's content (0, 0 for a
    tokenizer without a template)."""
    if not getattr(tokenizer, "chat_template", None):
        return 0, 0
    marker = "\x1fcontent\x1f"
    text = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                         add_generation_prompt=True)
    before, _, after = text.partition(marker)
    count = lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]) if t else 0
    return count(before), count(after)


def content_mask(prompt_mask: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``prompt_mask`` (B, T) without each row's first ``before`` and last ``after`` prompt positions; a row
    left with nothing keeps its whole prompt."""
    if before == 0 and after == 0:
        return prompt_mask
    index = prompt_mask.cumsum(1) - 1  # (B, T): position within the prompt (padding anywhere)
    length = prompt_mask.sum(1, keepdim=True)  # (B, 1)
    content = prompt_mask.bool() & (index >= before) & (index < length - after)
    empty = content.sum(1) == 0
    return torch.where(empty[:, None], prompt_mask.bool(), content).to(prompt_mask.dtype)


class RoutingContext:
    """The routing weights of the current forward, shared by every ``LoRAExpertLinear`` of a model."""

    def __init__(self) -> None:
        self.weights: torch.Tensor | None = None  # (B, E) over the active slots


class LoRAExpertLinear(nn.Module):
    """A frozen linear plus ``slots`` LoRA experts mixed per sequence by ``context.weights``."""

    def __init__(self, base: nn.Linear, slots: int, rank: int, alpha: float, dropout: float,
                 context: RoutingContext) -> None:
        super().__init__()
        self.base, self.context, self.scale = base, context, alpha / rank
        self.lora_A = nn.ParameterList([nn.Parameter(torch.zeros(rank, base.in_features)) for _ in range(slots)])
        self.lora_B = nn.ParameterList([nn.Parameter(torch.zeros(base.out_features, rank)) for _ in range(slots)])
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def reset_slot(self, slot: int, generator: torch.Generator) -> None:
        """Fresh expert: A ~ Kaiming-uniform (peft's default), B = 0."""
        with torch.no_grad():
            a = self.lora_A[slot]
            bound = 1 / math.sqrt(a.shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, d_in)
            a.copy_(torch.empty_like(a).uniform_(-bound, bound, generator=generator))
            self.lora_B[slot].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, T, d_in)
        out = self.base(x)
        weights = self.context.weights  # (B, E)
        if weights is None or weights.shape[-1] == 0:
            return out
        if weights.shape[0] != x.shape[0]:  # generate(num_return_sequences=k) repeats each prompt k times
            weights = weights.repeat_interleave(x.shape[0] // weights.shape[0], dim=0)
        n = weights.shape[-1]
        a = torch.stack(list(self.lora_A[:n]))  # (E, r, d_in)
        b = torch.stack(list(self.lora_B[:n]))  # (E, d_out, r)
        h = torch.einsum("btd,erd->bter", self.dropout(x), a)  # (B, T, E, r)
        h = h * weights[:, None, :, None].to(h.dtype)
        return out + self.scale * torch.einsum("bter,eor->bto", h, b)


@dataclass
class ExpertInfo:
    """One slot's lifecycle (plain data; goes into the checkpoint manifest)."""

    slot: int
    birth_step: int
    frozen_step: int | None = None
    mature_step: int | None = None


class ExpertManager:
    """The pool's lifecycle over a ``DyLoRAModel`` (see the module docstring)."""

    def __init__(self, model: DyLoRAModel, cfg: DyLoRAConfig, seed: int = 0) -> None:
        self.model, self.cfg, self.seed = model, cfg, seed
        self.experts: list[ExpertInfo] = []
        self.losses: deque[float] = deque(maxlen=2 * cfg.plateau_window)  # the newest expert's training loss

    @property
    def num_active(self) -> int:
        return len(self.experts)

    @property
    def full(self) -> bool:
        return self.num_active >= self.cfg.max_experts

    def add_expert(self, step: int, prototype: torch.Tensor | None = None) -> ExpertInfo:
        """Activate the next slot after ``step`` optimizer steps: seeded fresh LoRA weights, a router
        prototype (None: set from the first batches routed to it); older experts frozen if configured.
        The caller tells the scheduler (``TwoPhaseLRScheduler.expert_added``)."""
        if self.full:
            raise RuntimeError(f"the pool is full ({self.cfg.max_experts} experts)")
        slot = self.num_active
        generator = torch.Generator().manual_seed(self.seed * 1009 + slot)  # the same on every rank
        for layer in self.model.expert_linears():
            layer.reset_slot(slot, generator)
        if self.cfg.freeze_old_experts:
            for info in self.experts:
                if info.frozen_step is None:
                    info.frozen_step = step
                    self._set_mature(info, step)
        self.model.router.add(slot, prototype)
        info = ExpertInfo(slot, step)
        self.experts.append(info)
        self.losses.clear()
        return info

    def _set_mature(self, info: ExpertInfo, step: int) -> None:
        if info.mature_step is None:
            info.mature_step = step
        self.model.router.mature[info.slot] = True

    def step_done(self, step: int, loss: float) -> list[ExpertInfo]:
        """Record the newest expert's training loss after ``step`` steps; the experts that became mature."""
        self.losses.append(loss)
        matured = []
        for info in self.experts:
            if info.mature_step is not None:
                continue
            age = step - info.birth_step
            plateau = self.cfg.maturity == "plateau" and info is self.experts[-1] and self._plateaued()
            if age >= self.cfg.maturity_steps or plateau:
                self._set_mature(info, step)
                matured.append(info)
        return matured

    def _plateaued(self) -> bool:
        w = self.cfg.plateau_window
        if len(self.losses) < 2 * w:
            return False
        history = list(self.losses)
        before, after = sum(history[:w]) / w, sum(history[w:]) / w
        return (before - after) / max(abs(before), 1e-9) < self.cfg.plateau_tolerance

    def param_groups(self, lr: float) -> list[dict]:
        """One AdamW group per slot (``group["expert"] = slot``), no weight decay."""
        groups = []
        for slot in range(self.cfg.max_experts):
            params = [p for layer in self.model.expert_linears() for p in (layer.lora_A[slot], layer.lora_B[slot])]
            groups.append({"params": params, "lr": lr, "weight_decay": 0.0, "expert": slot, "name": f"expert_{slot}"})
        return groups

    def state_dict(self) -> dict[str, Any]:
        return {"experts": [vars(e).copy() for e in self.experts], "losses": list(self.losses)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.experts = [ExpertInfo(**e) for e in state["experts"]]
        self.losses.clear()
        self.losses.extend(state["losses"])


class DyLoRAModel(nn.Module):
    """A frozen causal LM with a pool of routed LoRA experts (module docstring).

    ``forward(input_ids, attention_mask, labels)`` routes each sequence on its prompt (the
    positions whose label is ``IGNORE``; every position when ``labels`` is None) and returns the
    base's output; ``last_routing`` keeps this forward's ``(features, weights, probs)``.
    """

    def __init__(self, base: nn.Module, cfg: DyLoRAConfig) -> None:
        super().__init__()
        self.base, self.cfg = base, cfg
        for p in base.parameters():
            p.requires_grad_(False)
        self.context = RoutingContext()
        for layer in decoder_layers(base):
            for parent_name in ("self_attn", "mlp"):
                parent = getattr(layer, parent_name)
                for name in cfg.target_modules:
                    if isinstance(getattr(parent, name, None), nn.Linear):
                        setattr(parent, name, LoRAExpertLinear(getattr(parent, name), cfg.max_experts, cfg.rank,
                                                               cfg.alpha, cfg.dropout, self.context))
        self.router = DynamicHybridRouter(base.config.hidden_size, cfg.max_experts, cfg.router_temperature,
                                          cfg.prototype_momentum)
        self.last_routing: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.template = (0, 0)  # chat-template tokens before / after a prompt's content (``set_template``)

    def set_template(self, tokenizer: Any) -> None:
        """Route on a prompt's content only: the chat template's system and role tokens, the same in every
        prompt, would otherwise dominate the pooled feature (``template_lengths``)."""
        self.template = template_lengths(tokenizer)

    @property
    def config(self) -> Any:
        return self.base.config

    def expert_linears(self) -> list[LoRAExpertLinear]:
        return [m for m in self.modules() if isinstance(m, LoRAExpertLinear)]

    def route(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(features (B, d), weights (B, E), probs (B, E))`` of a batch; sets the layers' weights."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if labels is not None:
            mask = mask * (labels == IGNORE)
        features = pooled_features(self.base.get_input_embeddings().weight, input_ids,
                                   content_mask(mask, *self.template))
        weights, probs = self.router.route(features)
        self.context.weights = weights
        self.last_routing = (features, weights, probs)
        return features, weights, probs

    def route_prompts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The routing weights (B, E) of whole prompts, for a generation engine that routes once per
        sequence and passes them back as ``routing_weights`` on every forward."""
        return self.route(input_ids, attention_mask, None)[1]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, routing_weights: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        """Route on the prompt (``labels`` marks it), or use ``routing_weights`` (B, E) as they are."""
        if routing_weights is not None:
            self.context.weights = routing_weights
        else:
            self.route(input_ids, attention_mask, labels)
        return self.base(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """``base.generate`` with the experts routed once on the prompt (kept for every new token)."""
        self.route(input_ids, attention_mask, None)
        return self.base.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
