"""Fused decoder layers for inference: fewer, larger kernels and less Python per token.

``fuse_decoder_layers(model)`` replaces, in place, each ``LlamaDecoderLayer`` of a model that uses
torch's SDPA attention by a ``FusedDecoderLayer`` that computes the same thing with fewer ops:

- the attention's q, k and v projections as one ``qkv_proj`` (their weights stacked: one matmul
  instead of three) when all three are plain ``nn.Linear``; otherwise (e.g. DyLoRA-MoE's expert
  linears around them) the three are called as they are;
- the FFN's gate and up projections as one ``gate_up_proj`` when the FFN is a plain ``LlamaMLP``
  (silu); any other FFN is called as it is, after its own ``fuse_for_inference()`` where it has one
  (MixLoRA's routed FFN stacks its frozen gate and up that way);
- the RMS norms as ``torch.nn.functional.rms_norm`` in float32 (Hugging Face's module otherwise);
- with q, k and v stacked, the rotary embedding applied to q and k in one go;
- attention straight through ``scaled_dot_product_attention`` with ``enable_gqa`` (no Hugging Face
  attention-interface dispatch, no key/value head repeat).

The layer keeps its children's names (``self_attn`` with its ``o_proj``, ``mlp``, the two norms),
so what reads them after loading (the quantizer, MixLoRA's routing trace) finds them. It is for
inference only (no dropout, no gradient checkpointing): the loaders apply it after the LoRA merge and
before low-bit weights (``trainables.lm.quantize.apply_weights``); training never sees it.

Measured on SmolLM2-135M-Instruct with int4 weights (2 threads, batch 1, a bare greedy loop over the
Hugging Face model and a ``DynamicCache``): 15.2 ms a token against 18.9 ms for the stock layers,
the same 48 greedy tokens (docs/benchmarks.md has the engine's figures).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaMLP, apply_rotary_pos_emb, rotate_half

from trainables.lm.base import decoder_layers

FUSED_QKV, FUSED_GATE_UP = "qkv_proj", "gate_up_proj"  # the names of the stacked projections a layer gets


def stacked_linear(*linears: nn.Linear) -> nn.Linear:
    """One ``nn.Linear`` whose output is the ``linears``' outputs side by side (weights stacked by rows)."""
    weight = torch.cat([linear.weight.detach() for linear in linears])  # (sum of outs, in)
    has_bias = linears[0].bias is not None
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        if has_bias:
            fused.bias.copy_(torch.cat([linear.bias.detach() for linear in linears]))
    return fused.requires_grad_(False)


def plain_linears(*modules: nn.Module) -> bool:
    """Whether every module is a plain ``nn.Linear`` (not a LoRA or expert wrapper) and they agree on bias."""
    return (all(type(m) is nn.Linear for m in modules)
            and len({m.bias is None for m in modules}) == 1 and len({m.in_features for m in modules}) == 1)


class FusedDecoderLayer(nn.Module):
    """A Llama decoder layer computed with fewer kernels (module docstring); built from a loaded one.

    Shapes: ``hidden_states`` (B, T, C) -> (B, T, C); q (B, H, T, D), k and v (B, KV, T, D).
    """

    def __init__(self, layer: LlamaDecoderLayer) -> None:
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = layer.input_layernorm, layer.post_attention_layernorm
        self.self_attn, self.mlp = layer.self_attn, layer.mlp
        attn, mlp = self.self_attn, self.mlp
        self.qkv_sizes: list[int] | None = None
        if plain_linears(attn.q_proj, attn.k_proj, attn.v_proj):
            self.qkv_sizes = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
            attn.qkv_proj = stacked_linear(attn.q_proj, attn.k_proj, attn.v_proj)
            del attn.q_proj, attn.k_proj, attn.v_proj
        self.gate_up = (type(mlp) is LlamaMLP and mlp.config.hidden_act == "silu"
                        and plain_linears(mlp.gate_proj, mlp.up_proj))
        if self.gate_up:
            mlp.gate_up_proj = stacked_linear(mlp.gate_proj, mlp.up_proj)
            del mlp.gate_proj, mlp.up_proj
        elif hasattr(mlp, "fuse_for_inference"):  # an FFN of its own (MixLoRA's) that stacks what it can
            mlp.fuse_for_inference()

    @staticmethod
    def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one op; Hugging Face's module takes five (same arithmetic in float32)
            return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)
        return norm(x)  # bfloat16: its own float32 upcast

    def _attention(self, x: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any,
                   position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        attn = self.self_attn
        B, T, _ = x.shape
        if self.qkv_sizes is not None:  # q and k rotated together: one set of rotary ops for both
            q_size, k_size, v_size = self.qkv_sizes
            qk, v = attn.qkv_proj(x).split([q_size + k_size, v_size], dim=-1)
            cos, sin = (t.unsqueeze(2) for t in position_embeddings)  # (B, T, 1, D)
            qk = qk.view(B, T, -1, attn.head_dim)  # (B, T, H + KV, D)
            qk = qk * cos + rotate_half(qk) * sin
            q, k = qk.split([q_size // attn.head_dim, k_size // attn.head_dim], dim=2)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            v = v.view(B, T, -1, attn.head_dim).transpose(1, 2)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            q, k, v = (t.view(B, T, -1, attn.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, D)
            q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)  # (B, KV, S, D): the whole sequence so far
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scaling,
                                             is_causal=T > 1 and attention_mask is None,
                                             enable_gqa=k.shape[1] != q.shape[1])  # (B, H, T, D)
        return attn.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gate_up:
            return self.mlp(x)
        gate, up = self.mlp.gate_up_proj(x).chunk(2, dim=-1)
        return self.mlp.down_proj(F.silu(gate) * up)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: Any = None,
                position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs: Any) -> torch.Tensor:
        """As ``LlamaDecoderLayer.forward`` is called by ``LlamaModel`` (``position_ids``, ``use_cache`` and the
        rest arrive in ``kwargs``, unused: the rotary embedding comes in ``position_embeddings``)."""
        x = hidden_states + self._attention(self._norm(self.input_layernorm, hidden_states), attention_mask, cache,
                                            position_embeddings)
        return x + self._ffn(self._norm(self.post_attention_layernorm, x))


def fuse_decoder_layers(model: nn.Module) -> int:
    """Replace the Llama decoder layers of ``model`` (itself or the causal LM inside it, e.g. a DyLoRA-MoE
    model's ``base``) by ``FusedDecoderLayer``s in place; returns how many. A model whose attention is not
    torch's SDPA, or whose layers are not ``LlamaDecoderLayer``s, is left as it is (0)."""
    for module in model.modules():
        layers = decoder_layers(module)
        if layers is None:
            continue
        if getattr(module.config, "_attn_implementation", None) != "sdpa":
            return 0
        count = 0
        for i, layer in enumerate(layers):
            if type(layer) is LlamaDecoderLayer:
                layers[i] = FusedDecoderLayer(layer)
                count += 1
        return count
    return 0
