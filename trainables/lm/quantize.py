"""8-bit weights for inference on CPU: the frozen base's linear layers as int8 (``weights: int8``).

``quantize_base(model)`` replaces, in place, every frozen projection of the decoder layers
(``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``; the frozen ``base`` of a DyLoRA-MoE
expert linear) by an ``Int8Linear``: the weight rounded to int8 with one scale per output channel
(symmetric, ``scale = max|W_row| / 127``), a quarter of the float32 bytes. It is weight-only: the
activations are not quantized, they enter torch's CPU weight-only int8 kernel
(``torch._weight_int8pack_mm``) in bfloat16, the input type it has a vectorised kernel for, and the
result comes back as float32. The LM head gets its own int8 copy too (on SmolLM2 it is tied to the
input embeddings, which stay float32): at batch 1 its 49152 x 576 float32 weight was a fifth of a
decode step's bytes. Everything else stays float32: the adapters (LoRA / MixLoRA experts and
routers, DyLoRA-MoE's experts and router), the embeddings and the norms.

Why this kernel (SmolLM2-135M, 2 busy CPU threads): int8 activations too (dynamic quantization,
``torch.ao.quantization.quantize_dynamic``, per-tensor activation scales) broke the model (greedy
next token equal to float32's at 47% of positions): SmolLM2's activations have outlier channels; per
token scales with ``torch._int_mm`` still cost 0.09 nat of KL to float32 per token. Weight-only int8
costs 0.008 (0.005 of it the int8 weights, the rest bfloat16 activations and scales). ``_weight_int8pack_mm``
with float32 input ran 10x slower than the float32 matmul; with bfloat16 input it took about half
its time at 1-4 rows, about the same from 16 rows up (prefill, lm-eval batches).

Inference only: an ``Int8Linear`` has no parameters and no gradient. Apply it after plain LoRA is
merged into the frozen weights (``trainables.lm.merge``), as the loaders do with ``weights="int8"``.
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.lm.base import ATTENTION_MODULES, MLP_MODULES, decoder_layers
from trainables.lm.sections import WEIGHTS


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` with int8 weights, one bfloat16 scale per output channel (weight-only).

    ``weight_int8`` (out, in) and ``scale`` (out,) are buffers; ``bias`` (out,) a float32 buffer or None.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()  # (out, in)
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127  # (out,)
        # the kernel takes bfloat16 scales: round up (bfloat16 keeps 8 bits, relative error <= 2^-9), so the
        # largest weight of a row still fits in [-127, 127], then round each weight to that scale
        scale = (scale * (1 + 2 ** -8)).to(torch.bfloat16)
        q = torch.round(weight / scale.float()[:, None]).clamp_(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", q.contiguous())  # (out, in)
        self.register_buffer("scale", scale)  # (out,)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., in) -> (..., out), float32
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        out = torch._weight_int8pack_mm(rows, self.weight_int8, self.scale).float()  # (N, out)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=int8"


def _causal_lm(model: nn.Module) -> nn.Module:
    """The pretrained causal LM inside ``model`` (itself, or e.g. a DyLoRA-MoE model's ``base``)."""
    for module in model.modules():
        if decoder_layers(module) is not None:
            return module
    raise ValueError(f"{type(model).__name__}: no decoder layers (model.layers) to quantize")


def quantize_base(model: nn.Module) -> int:
    """Make the frozen base's projections and its LM head ``Int8Linear`` in place (module docstring);
    returns how many.

    Raises:
        ValueError: a projection that is neither a plain ``nn.Linear`` nor a wrapper with a plain
            ``base`` linear (unmerged peft LoRA: merge it first), or a model with no decoder layers.
    """
    count = 0
    for i, layer in enumerate(decoder_layers(_causal_lm(model)) or ()):
        for parent_name, names in (("self_attn", ATTENTION_MODULES), ("mlp", MLP_MODULES)):
            parent = getattr(layer, parent_name)
            for name in names:
                owner, child = parent, getattr(parent, name)
                if type(child) is not nn.Linear and type(getattr(child, "base", None)) is nn.Linear:
                    owner, name, child = child, "base", child.base  # a routed-expert wrapper's frozen linear
                if isinstance(child, Int8Linear):
                    continue
                if type(child) is not nn.Linear:
                    raise ValueError(f"layer {i} {parent_name}.{name}: {type(child).__name__} is not a frozen "
                                     f"nn.Linear (merge LoRA into the base before quantizing)")
                setattr(owner, name, Int8Linear(child))
                count += 1
    lm = _causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is nn.Linear:  # its own int8 copy: a tied input embedding stays float32
        lm.set_output_embeddings(Int8Linear(head))
        count += 1
    return count


def apply_weights(model: nn.Module, weights: str) -> nn.Module:
    """``model`` with ``weights`` (``fp32``: as it is; ``int8``: ``quantize_base``), in place."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights: got {weights!r}, expected one of {', '.join(WEIGHTS)}")
    if weights == "int8":
        quantize_base(model)
    return model
