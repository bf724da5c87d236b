"""Low-bit weights for inference on CPU: the frozen base's linear layers as int8 or int4
(``weights: int8`` / ``int4``).

``quantize_base(model, bits)`` replaces, in place, every frozen projection of the decoder layers
(``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, or the stacked ``qkv_proj`` / ``gate_up_proj``
of a fused layer, ``trainables.lm.fused``; the frozen ``base`` of a DyLoRA-MoE expert linear) and the LM
head (its own copy; on SmolLM2 it is tied to the input embeddings, which stay float32: at batch 1 its
49152 x 576 float32 weight was a fifth of a decode step's bytes):

- ``Int8Linear`` (8 bits): the weight rounded to int8 with one scale per output channel (symmetric,
  ``scale = max|W_row| / 127``), a quarter of the float32 bytes, multiplied by our CPU kernel at decode
  (up to 8 rows, float32 activations: ``trainables.lm.int8_kernel``, built once per machine) and by
  torch's weight-only int8 kernel (``torch._weight_int8pack_mm``) above that, or where ours cannot be built.
- ``Int4Linear`` (4 bits): the weight in groups of ``INT4_GROUP`` (32) inputs, each with its own scale
  and offset (asymmetric, from the group's min and max: the format of llama.cpp's Q4_1), an eighth of
  the float32 bytes, multiplied by torch's CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``). The
  kernel takes layers with a multiple of 16 outputs and of 32 inputs; a layer of another shape gets
  8 bits instead.

Both are weight-only: the activations are not quantized. They enter torch's kernels in bfloat16, the
input type those have a vectorised kernel for (ours takes them in float32), and the result comes back
as float32, so a row's result does not depend on the rest of its batch, give or take that rounding
where a batch crosses 8 rows. Everything else stays float32: the adapters (LoRA / MixLoRA experts
and routers, DyLoRA-MoE's experts and router), the embeddings and the norms.

Why these kernels (SmolLM2-135M, 2 busy CPU threads): int8 activations too (dynamic quantization,
``torch.ao.quantization.quantize_dynamic``, per-tensor activation scales) broke the model (greedy
next token equal to float32's at 47% of positions): SmolLM2's activations have outlier channels; per
token scales with ``torch._int_mm`` still cost 0.09 nat of KL to float32 per token. Weight-only int8
costs 0.008 (0.005 of it the int8 weights, the rest bfloat16 activations and scales); weight-only int4
0.034 (next-token log-loss on text 2.916 against float32's 2.864 and int8's 2.866). ``_weight_int8pack_mm``
with float32 input ran 10x slower than the float32 matmul; with bfloat16 input it took about half
its time at 1-4 rows, about the same from 16 rows up (prefill, lm-eval batches). At one row the int4
kernel took 0.4x torch's int8 kernel's time over a step's 211 SmolLM2 projections; ours (float32
activations, ``trainables.lm.int8_kernel``) took 0.65x torch's, and decodes int8 as fast as int4.

Inference only: these modules have no parameters and no gradient, and their kernels no autograd formula; the
loaders call them under ``torch.no_grad`` / ``inference_mode`` (a ``no_grad`` decorator of their own cost
5 % of an int4 decode step at batch 1: 14.0 against 13.4 ms). Apply them after plain LoRA is
merged into the frozen weights (``trainables.lm.merge``), as the loaders do with ``weights="int8"`` /
``"int4"``. The packed int4 layout is torch's for this CPU: it is made at load, never saved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainables.lm.base import ATTENTION_MODULES, MLP_MODULES, decoder_layers
from trainables.lm.fused import FUSED_GATE_UP, FUSED_QKV, forget_plans, fuse_decoder_layers
from trainables.lm.int8_kernel import KERNEL_MAX_ROWS, int8_matmul
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
        self.register_buffer("scale_float", scale.float(), persistent=False)  # (out,): for our kernel
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., in) -> (..., out), float32
        rows = x.reshape(-1, self.in_features)  # (N, in)
        ours = int8_matmul() if rows.shape[0] <= KERNEL_MAX_ROWS else None
        if ours is not None:
            out = ours(rows, self.weight_int8, self.scale_float)  # (N, out)
        else:
            out = torch._weight_int8pack_mm(rows.to(torch.bfloat16), self.weight_int8, self.scale).float()
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def row_kernel(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer as a function of rows (N, in) -> (N, out) bound to its buffers, for a fused layer's
        per-token path (``trainables.lm.fused.row_kernel``). Up to ``KERNEL_MAX_ROWS`` rows, our kernel
        (``trainables.lm.int8_kernel``: float32 in and out) where this machine has it; otherwise torch's,
        bfloat16 out where there is no bias (the caller's next float32 op promotes it), float32 with the
        bias added."""
        torch_kernel = _bound(torch._weight_int8pack_mm, self.bias, self.weight_int8, self.scale)
        ours = int8_matmul()
        if ours is None:
            return torch_kernel
        weight, scale, bias = self.weight_int8, self.scale_float, self.bias

        def rows_times_weight(rows: torch.Tensor) -> torch.Tensor:  # (N, in) -> (N, out)
            if rows.shape[0] > KERNEL_MAX_ROWS:
                return torch_kernel(rows)
            out = ours(rows, weight, scale)
            return out if bias is None else out.add_(bias)

        return rows_times_weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=int8"


INT4_GROUP = 32  # inputs per int4 scale and offset (llama.cpp's Q4_1 block)


class Int4Linear(nn.Module):
    """A frozen ``nn.Linear`` with int4 weights in groups of ``INT4_GROUP`` inputs, each with a bfloat16
    scale and offset (weight-only, asymmetric: ``w = (q - 8) * scale + offset``, ``q`` in 0..15).

    ``weight_int4`` is torch's packed CPU layout (uint8, made by ``_convert_weight_to_int4pack_for_cpu``);
    ``scale_offset`` (in / group, out, 2) bfloat16; ``bias`` (out,) a float32 buffer or None.
    """

    def __init__(self, linear: nn.Linear, group: int = INT4_GROUP) -> None:
        super().__init__()
        if not self.fits(linear, group):
            raise ValueError(f"int4: needs a multiple of 16 outputs and of {group} inputs, got "
                             f"{linear.out_features} x {linear.in_features}")
        weight = linear.weight.detach().float()  # (out, in)
        groups = weight.reshape(linear.out_features, -1, group)  # (out, in / group, group)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # (out, in / group)
        # the kernel takes bfloat16 scales and offsets: round them first, then each weight to the rounded pair
        scale = ((high - low).clamp_min(1e-12) / 15).to(torch.bfloat16)
        offset = (low + 8 * scale.float()).to(torch.bfloat16)  # q = 0 is the group's min
        q = torch.round((groups - offset.float()[..., None]) / scale.float()[..., None] + 8).clamp_(0, 15)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).reshape_as(weight), 1)
        self.in_features, self.out_features, self.group = linear.in_features, linear.out_features, group
        self.register_buffer("weight_int4", packed)
        self.register_buffer("scale_offset", torch.stack([scale.T, offset.T], dim=-1).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    @staticmethod
    def fits(linear: nn.Linear, group: int = INT4_GROUP) -> bool:
        """Whether torch's int4 CPU kernel takes ``linear``'s shape."""
        return linear.out_features % 16 == 0 and linear.in_features % group == 0

    def dequantized(self) -> torch.Tensor:
        """The float32 weight (out, in) the int4 one stands for (for tests and inspection)."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight_int4, self.group,
                                                          self.scale_offset).float().T.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., in) -> (..., out), float32
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (N, in)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.weight_int4, self.group,
                                                         self.scale_offset).float()  # (N, out)
        if self.bias is not None:
            out.add_(self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)

    def row_kernel(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """As ``Int8Linear.row_kernel``."""
        return _bound(torch.ops.aten._weight_int4pack_mm_for_cpu, self.bias, self.weight_int4, self.group,
                      self.scale_offset)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights=int4, group={self.group}"


def _bound(kernel: Callable[..., torch.Tensor], bias: torch.Tensor | None, *operands: Any
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``rows -> kernel(rows in bfloat16, *operands)`` (+ ``bias`` in float32 where there is one)."""
    if bias is None:
        return lambda rows: kernel(rows.to(torch.bfloat16), *operands)
    return lambda rows: kernel(rows.to(torch.bfloat16), *operands).float() + bias


QUANTIZED = (Int8Linear, Int4Linear)
BITS = {"int8": 8, "int4": 4}  # weights -> bits (``apply_weights``)


def _quantized(linear: nn.Linear, bits: int) -> nn.Module:
    """``linear`` with ``bits``-bit weights: int4 where the kernel takes its shape, else int8."""
    return Int4Linear(linear) if bits == 4 and Int4Linear.fits(linear) else Int8Linear(linear)


def _causal_lm(model: nn.Module) -> nn.Module:
    """The pretrained causal LM inside ``model`` (itself, or e.g. a DyLoRA-MoE model's ``base``)."""
    for module in model.modules():
        if decoder_layers(module) is not None:
            return module
    raise ValueError(f"{type(model).__name__}: no decoder layers (model.layers) to quantize")


def quantize_base(model: nn.Module, bits: int = 8) -> int:
    """Make the frozen base's projections and its LM head ``bits``-bit (8: ``Int8Linear``, 4:
    ``Int4Linear``) in place (module docstring); returns how many. A layer already quantized stays as it is.

    Raises:
        ValueError: a projection that is neither a plain ``nn.Linear`` nor a wrapper with a plain
            ``base`` linear (unmerged peft LoRA: merge it first), or a model with no decoder layers.
    """
    count = 0
    if bits == 8:
        int8_matmul()  # our int8 kernel built (once per machine) or loaded now, at load, not at the first request
    projections = (("self_attn", ATTENTION_MODULES + (FUSED_QKV,)), ("mlp", MLP_MODULES + (FUSED_GATE_UP,)))
    for i, layer in enumerate(decoder_layers(_causal_lm(model)) or ()):
        for parent_name, names in projections:
            parent = getattr(layer, parent_name)
            for name in (n for n in names if hasattr(parent, n)):  # a fused layer has qkv_proj for q, k, v
                owner, child = parent, getattr(parent, name)
                if type(child) is not nn.Linear and type(getattr(child, "base", None)) is nn.Linear:
                    owner, name, child = child, "base", child.base  # a routed-expert wrapper's frozen linear
                if isinstance(child, QUANTIZED):
                    continue
                if type(child) is not nn.Linear:
                    raise ValueError(f"layer {i} {parent_name}.{name}: {type(child).__name__} is not a frozen "
                                     f"nn.Linear (merge LoRA into the base before quantizing)")
                setattr(owner, name, _quantized(child, bits))
                count += 1
    lm = _causal_lm(model)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if type(head) is nn.Linear:  # its own int8 copy: a tied input embedding stays float32
        lm.set_output_embeddings(_quantized(head, bits))
        count += 1
    forget_plans(model)  # a forward before this bound the replaced projections
    return count


def apply_weights(model: nn.Module, weights: str, device: str | torch.device = "cpu") -> nn.Module:
    """``model`` ready for inference with ``weights`` on ``device``, in place: on the CPU its decoder layers
    fused (``trainables.lm.fused``), then its frozen projections as they are (``fp32``) or quantized
    (``int8`` / ``int4``: ``quantize_base``). Apply it after the LoRA merge; the model is then for
    inference only. On a GPU the layers stay Hugging Face's: the fused layers and our CPU kernels were
    written and measured on CPU, and only the stock layers have run on CUDA (``make gpu-check``)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights: got {weights!r}, expected one of {', '.join(WEIGHTS)}")
    if torch.device(device).type != "cpu":
        if weights in BITS:
            raise ValueError(f"weights: {weights} is a CPU format; got device {device}")
        return model
    fuse_decoder_layers(model)
    if weights in BITS:
        quantize_base(model, BITS[weights])
    return model
