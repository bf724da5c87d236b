"""Fused decoder layers (``trainables.lm.fused``): the same outputs as the stock Hugging Face layers,
left-padded batches and incremental decoding included; q/k/v and gate/up stacked only where they are
plain linears; low-bit weights quantize the stacked projections; a non-SDPA model is left alone."""

from __future__ import annotations

import pytest
import torch
from support import randomize_routing
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from trainables.dylora.config import DyLoRAConfig
from trainables.dylora.experts import DyLoRAModel
from trainables.lm import load_base
from trainables.lm.engine import GenerationEngine, SamplingParams
from trainables.lm.fused import FusedDecoderLayer, FusedLlamaModel, fuse_decoder_layers, rms_norm, sdpa_mask
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
    assert type(fused.model) is FusedLlamaModel  # its lean forward
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


@torch.no_grad()
def test_a_prompt_fed_in_two_chunks_after_a_cache_gives_the_stock_logits() -> None:
    """Several new positions after cached ones (the mask ``sdpa_mask`` builds then: padding and causal
    order with an offset), on a left-padded batch, as the stock layers compute them."""
    stock, fused, tokenizer = _pair()
    fuse_decoder_layers(fused)
    batch = _padded(tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    cut = ids.shape[1] // 2
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = []
    for model in (stock, fused):
        cache = DynamicCache()
        model(input_ids=ids[:, :cut], attention_mask=mask[:, :cut], position_ids=positions[:, :cut], cache=cache)
        logits.append(model(input_ids=ids[:, cut:], attention_mask=mask, position_ids=positions[:, cut:],
                            cache=cache).logits)
    keep = mask[:, cut:].bool()
    assert torch.allclose(logits[1][keep], logits[0][keep], atol=1e-5, rtol=1e-5)


def test_the_sdpa_mask_keeps_padding_and_causal_order_and_no_query_sees_nothing() -> None:
    padded = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    mask = sdpa_mask(padded, past=0, length=4)  # (B, 1, T, S)
    assert mask.shape == (2, 1, 4, 4)
    assert mask[0, 0].tolist() == [[True, False, False, False], [False, True, False, False],  # pads: themselves
                                   [False, False, True, False], [False, False, True, True]]
    assert torch.equal(mask[1, 0], torch.ones(4, 4, dtype=torch.bool).tril())
    assert sdpa_mask(padded, past=3, length=1).tolist() == [[[[False, False, True, True]]], [[[True] * 4]]]
    ones = torch.ones(1, 4, dtype=torch.long)
    assert sdpa_mask(ones, past=3, length=1) is None and sdpa_mask(ones, past=0, length=4) is None
    assert sdpa_mask(ones, past=2, length=2)[0, 0].tolist() == [[True, True, True, False], [True] * 4]
    assert sdpa_mask(None, past=2, length=2)[0, 0].tolist() == [[True, True, True, False], [True] * 4]


def test_rms_norm_as_a_layer_norm_equals_llamas_norm() -> None:
    torch.manual_seed(0)
    norm = LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 64) * torch.logspace(-2, 2, 5)[None, :, None]  # small and large rows
    doubled = torch.cat([norm.weight, norm.weight]).detach()
    assert torch.allclose(rms_norm(x, doubled, norm.variance_epsilon), norm(x), atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_a_fused_model_converted_after_a_forward_computes_with_its_new_tensors() -> None:
    """A fused layer keeps what it reads per call (``_LayerPlan``) from its first forward; ``.to()`` replaces
    its buffers, and the next forward must read the new ones. A round trip through bfloat16 rounds every
    weight, the stock model's too: both must then agree again, exactly as before."""
    stock, fused, tokenizer = _pair()
    for name, param in stock.named_parameters():
        if "norm" in name:  # weights that bfloat16 rounds (a fresh norm's are all 1)
            param.data.uniform_(0.5, 1.5)
    fused.load_state_dict(stock.state_dict())
    fuse_decoder_layers(fused)
    batch = _padded(tokenizer)
    fused(**batch)  # the plan bound to the original float32 tensors
    stock, fused = (m.to(torch.bfloat16).to(torch.float32) for m in (stock, fused))
    keep = batch["attention_mask"].bool()
    assert torch.allclose(fused(**batch).logits[keep], stock(**batch).logits[keep], atol=1e-5, rtol=1e-5)


def test_the_fused_model_refuses_to_return_per_layer_hidden_states() -> None:
    _, fused, tokenizer = _pair()
    fuse_decoder_layers(fused)
    with pytest.raises(ValueError, match="hidden states"):
        fused(**_padded(tokenizer), output_hidden_states=True)
