"""Fused decoder layers (``trainables.lm.fused``): the same outputs as the stock Hugging Face layers,
left-padded batches and incremental decoding included; q/k/v and gate/up stacked only where they are
plain linears; low-bit weights quantize the stacked projections; a non-SDPA model is left alone."""

from __future__ import annotations

import pytest
import torch
from support import randomize_routing

from trainables.dylora.config import DyLoRAConfig
from trainables.dylora.experts import DyLoRAModel
from trainables.lm import load_base
from trainables.lm.engine import GenerationEngine, SamplingParams
from trainables.lm.fused import FusedDecoderLayer, fuse_decoder_layers
from trainables.lm.quantize import Int4Linear, Int8Linear, apply_weights
from trainables.mixlora.checkpoint import apply_adapters, prepare_for_inference
from trainables.mixlora.config import MixLoRAConfig

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b", "Hi"]


def _padded(tokenizer) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = "left"  # as the engine and lm-eval batch prompts of different lengths
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def _pair(prepare=lambda model: model) -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """(stock, fused) copies of the same tiny model (``prepare`` applied to each before fusing), and its tokenizer."""
    stock, tokenizer = load_base("tiny-llama")
    fused, _ = load_base("tiny-llama")
    stock, fused = prepare(stock).eval(), prepare(fused).eval()
    fused.load_state_dict(stock.state_dict())
    return stock, fused, tokenizer


@torch.no_grad()
def test_fused_layers_give_the_stock_outputs_on_a_padded_batch() -> None:
    stock, fused, tokenizer = _pair()
    assert fuse_decoder_layers(fused) == len(fused.model.layers)
    layer = fused.model.layers[0]
    assert isinstance(layer, FusedDecoderLayer) and layer.qkv_sizes == [64, 32, 32] and layer.gate_up
    assert not hasattr(layer.self_attn, "q_proj") and layer.self_attn.qkv_proj.weight.shape == (128, 64)
    assert layer.mlp.gate_up_proj.weight.shape == (256, 64) and hasattr(layer.mlp, "down_proj")
    batch = _padded(tokenizer)
    keep = batch["attention_mask"].bool()
    assert torch.allclose(fused(**batch).logits[keep], stock(**batch).logits[keep], atol=1e-5, rtol=1e-5)
    # incremental decoding with a cache: Hugging Face's generate on the padded batch, and our engine on the
    # fused model against the stock model's generate, a row at a time (the same batch both sides)
    expected = stock.generate(**batch, max_new_tokens=10, do_sample=False)
    assert torch.equal(fused.generate(**batch, max_new_tokens=10, do_sample=False), expected)
    engine = GenerationEngine(fused, tokenizer, max_batch_size=4)
    try:
        engine.eos = set()
        for text in TEXTS:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T)
            alone = stock.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
            answer = engine.submit(ids[0].tolist(), SamplingParams(max_tokens=10, temperature=0.0)).collect()
            assert answer.text == tokenizer.decode(alone[0, ids.shape[1]:]), text
    finally:
        engine.close()


@torch.no_grad()
def test_mixlora_keeps_its_routed_ffn_and_its_outputs() -> None:
    def mixlora(model):
        torch.manual_seed(0)
        apply_adapters(model, MixLoRAConfig(base="tiny-llama", method="mixlora", dropout=0.0, num_experts=4, top_k=2))
        randomize_routing(model)
        return prepare_for_inference(model)  # the attention LoRA merged: q, k, v are plain linears again

    stock, fused, tokenizer = _pair(mixlora)
    ffn_type = type(stock.model.layers[0].mlp)
    fuse_decoder_layers(fused)
    layer = fused.model.layers[0]
    assert layer.qkv_sizes is not None and not layer.gate_up and type(layer.mlp) is ffn_type  # its routed FFN
    assert hasattr(layer.mlp, "gate_up_proj") and not hasattr(layer.mlp, "gate_proj")  # its frozen gate and up stacked
    batch = _padded(tokenizer)
    keep = batch["attention_mask"].bool()
    assert torch.allclose(fused(**batch).logits[keep], stock(**batch).logits[keep], atol=1e-5, rtol=1e-5)
    long = tokenizer(["word " * 100], return_tensors="pt")  # > 128 tokens: the sorted dispatch, not the fast path
    assert long["input_ids"].shape[1] > layer.mlp.inference_max_tokens
    assert torch.allclose(fused(**long).logits, stock(**long).logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_dylora_expert_linears_are_called_as_they_are() -> None:
    base, tokenizer = load_base("tiny-llama")
    model = DyLoRAModel(base, DyLoRAConfig()).eval()
    batch = _padded(tokenizer)
    expected = model(**batch).logits
    assert fuse_decoder_layers(model) == len(base.model.layers)  # found inside the DyLoRA model
    layer = base.model.layers[0]
    assert layer.qkv_sizes is None and hasattr(layer.self_attn, "q_proj")  # expert wrappers: not stacked
    keep = batch["attention_mask"].bool()
    assert torch.allclose(model(**batch).logits[keep], expected[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("weights", "kind"), [("int8", Int8Linear), ("int4", Int4Linear)])
def test_low_bit_weights_quantize_the_stacked_projections(weights: str, kind: type) -> None:
    model, _ = load_base("tiny-llama")
    apply_weights(model.eval(), weights)
    for layer in model.model.layers:
        assert isinstance(layer, FusedDecoderLayer)
        assert isinstance(layer.self_attn.qkv_proj, kind) and isinstance(layer.mlp.gate_up_proj, kind)
        assert isinstance(layer.self_attn.o_proj, kind) and isinstance(layer.mlp.down_proj, kind)


@torch.no_grad()
def test_bfloat16_layers_keep_the_stock_norms() -> None:
    stock, fused, tokenizer = _pair(lambda model: model.to(torch.bfloat16))
    fuse_decoder_layers(fused)
    batch = _padded(tokenizer)
    keep = batch["attention_mask"].bool()
    a, b = fused(**batch).logits[keep].float(), stock(**batch).logits[keep].float()
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999


def test_a_model_without_sdpa_attention_is_left_alone() -> None:
    model, _ = load_base("tiny-llama")
    model.config._attn_implementation = "eager"
    assert fuse_decoder_layers(model) == 0
    assert not any(isinstance(layer, FusedDecoderLayer) for layer in model.model.layers)
