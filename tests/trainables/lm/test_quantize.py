"""8- and 4-bit weights (``trainables.lm.quantize``): the frozen base's projections become int8 / int4,
the model stays close to float32, adapters stay float32 and untouched; ``serve.weights`` validates;
``moe-orch generate --weights int8|int4`` runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import randomize_routing

from orchestrator.cli import main
from trainables.dylora.config import DyLoRAConfig
from trainables.dylora.experts import DyLoRAModel
from trainables.lm import load_base
from trainables.lm.base import decoder_layers
from trainables.lm.fused import FusedDecoderLayer
from trainables.lm.quantize import INT4_GROUP, Int4Linear, Int8Linear, apply_weights, quantize_base
from trainables.mixlora.checkpoint import apply_adapters, prepare_for_inference
from trainables.mixlora.config import MixLoRAConfig

REPO = Path(__file__).resolve().parents[3]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b", "Hello, world"]
PROJECTIONS = 7  # q, k, v, o, gate, up, down


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def _close(fp32: torch.Tensor, int8: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(the smallest cosine similarity of a position's logits, the share of equal greedy tokens), real tokens."""
    keep = mask.bool()
    cos = torch.nn.functional.cosine_similarity(fp32[keep], int8[keep], dim=-1)
    return cos.min().item(), (fp32[keep].argmax(-1) == int8[keep].argmax(-1)).float().mean().item()


@torch.no_grad()
def test_int8_base_is_close_to_fp32_and_its_projections_are_int8() -> None:
    model, tokenizer = load_base("tiny-llama")
    batch = _batch(tokenizer)
    ref = model(**batch).logits
    layers = len(model.model.layers)
    assert quantize_base(model) == PROJECTIONS * layers + 1  # + the LM head (its own copy)
    assert quantize_base(model) == 0  # already int8: nothing more to do
    int8 = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(int8) == PROJECTIONS * layers + 1 and all(m.weight_int8.dtype == torch.int8 for m in int8)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())
    assert isinstance(model.lm_head, Int8Linear)  # the head as int8; the (tied) input embeddings stay float32
    assert model.model.embed_tokens.weight.dtype == torch.float32
    out = model(**batch).logits
    assert out.dtype == torch.float32
    cos, same = _close(ref, out, batch["attention_mask"])
    assert cos > 0.99 and same >= 0.9, (cos, same)
    assert not torch.equal(ref, out)  # it did change the arithmetic


def test_int8linear_matches_the_dequantized_weight() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=True)
    q = Int8Linear(linear)
    x = torch.randn(2, 3, 64)  # 6 rows: one kernel for the batch and for its first 3 (test_int8_kernel.py: both)
    dequantized = q.weight_int8.float() * q.scale.float()[:, None]  # (out, in)
    assert ((dequantized - linear.weight).abs() <= q.scale.float()[:, None] / 2 + 1e-7).all()  # round to nearest
    expected = torch.nn.functional.linear(x, dequantized, linear.bias)
    out = q(x)
    assert out.shape == (2, 3, 48) and out.dtype == torch.float32
    assert torch.allclose(out, expected, rtol=0.02, atol=0.02), (out - expected).abs().max()
    assert torch.allclose(q(x[:1]), out[:1])  # a row's result does not depend on the rest of its batch
    assert list(q.parameters()) == []  # nothing to train


def test_int4linear_matches_its_groups_min_max_quantization() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 48, bias=True)
    q = Int4Linear(linear)
    weight = q.dequantized()  # (out, in)
    assert weight.shape == (48, 96)
    groups, ref = weight.reshape(48, -1, INT4_GROUP), linear.weight.detach().reshape(48, -1, INT4_GROUP)
    step = (ref.amax(-1) - ref.amin(-1)) / 15  # (out, groups): one of 16 levels a group
    # round to nearest of the group's 16 levels, give or take the bfloat16 scale and offset
    assert ((groups - ref).abs() <= step[..., None] * 0.6 + 1e-3).all(), (groups - ref).abs().max()
    assert (groups.amin(-1) - ref.amin(-1)).abs().max() < 0.05 * step.max()  # the lowest level is the group's min
    x = torch.randn(2, 5, 96)
    out = q(x)
    assert out.shape == (2, 5, 48) and out.dtype == torch.float32
    expected = torch.nn.functional.linear(x, weight, linear.bias)
    assert torch.allclose(out, expected, rtol=0.02, atol=0.05), (out - expected).abs().max()
    assert torch.allclose(q(x[:1]), out[:1])  # a row's result does not depend on the rest of its batch
    assert list(q.parameters()) == []


@torch.no_grad()
def test_int4_base_is_close_to_fp32_where_the_kernel_takes_the_shape() -> None:
    model, tokenizer = load_base("tiny-llama")
    batch = _batch(tokenizer)
    ref = model(**batch).logits
    layers = len(model.model.layers)
    assert quantize_base(model, bits=4) == PROJECTIONS * layers + 1
    int4 = [m for m in model.model.layers.modules() if isinstance(m, Int4Linear)]
    assert len(int4) == PROJECTIONS * layers  # every projection of tiny-llama fits the kernel: 16 | out, 32 | in
    # its 259-token head does not (259 outputs): it takes 8 bits
    assert isinstance(model.lm_head, Int8Linear) and not Int4Linear.fits(torch.nn.Linear(64, 259))
    with pytest.raises(ValueError, match="multiple of 16 outputs"):
        Int4Linear(torch.nn.Linear(64, 259))
    out = model(**batch).logits
    cos, same = _close(ref, out, batch["attention_mask"])
    assert cos > 0.95 and same >= 0.7, (cos, same)
    assert not torch.equal(ref, out)


@torch.no_grad()
def test_mixlora_adapters_stay_float_and_untouched() -> None:
    model, tokenizer = load_base("tiny-llama")
    torch.manual_seed(0)
    apply_adapters(model, MixLoRAConfig(base="tiny-llama", method="mixlora", dropout=0.0, num_experts=4, top_k=2))
    randomize_routing(model)
    prepare_for_inference(model.eval())  # the attention LoRA merged into the frozen weights
    adapters = {n: p.clone() for n, p in model.named_parameters() if "lora" in n or "router" in n}
    assert adapters
    batch = _batch(tokenizer)
    ref = model(**batch).logits
    apply_weights(model, "int8")
    after = dict(model.named_parameters())
    for name, value in adapters.items():
        assert after[name].dtype == torch.float32 and torch.equal(after[name], value), name
    assert all(".lora_" in n or "router" in n or "embed" in n or "norm" in n or "lm_head" in n for n in after)
    cos, same = _close(ref, model(**batch).logits, batch["attention_mask"])
    assert cos > 0.99 and same >= 0.9, (cos, same)


@torch.no_grad()
def test_dylora_experts_stay_float_around_an_int8_base() -> None:
    base, tokenizer = load_base("tiny-llama")
    model = DyLoRAModel(base, DyLoRAConfig()).eval()
    experts = model.expert_linears()
    assert quantize_base(model) == PROJECTIONS * len(base.model.layers) + 1  # + the LM head
    assert all(isinstance(e.base, Int8Linear) for e in experts)
    assert all(p.dtype == torch.float32 for e in experts for p in e.parameters())  # lora_A / lora_B


def test_unmerged_lora_is_refused() -> None:
    model, _ = load_base("tiny-llama")
    apply_adapters(model, MixLoRAConfig(base="tiny-llama", method="lora"))  # peft LoRA, not merged
    with pytest.raises(ValueError, match="merge LoRA"):
        quantize_base(model)
    with pytest.raises(ValueError, match="expected one of fp32, int8, int4"):
        apply_weights(model, "int3")


def test_the_layers_are_fused_and_quantized_for_the_cpu_only() -> None:
    """On a GPU the loaders keep Hugging Face's layers (the ones run on CUDA, ``make gpu-check``); the fused
    layers and the low-bit formats are for the CPU. Nothing moves here: ``apply_weights`` only prepares."""
    model, _ = load_base("tiny-llama")
    stock = [type(layer) for layer in decoder_layers(model)]
    assert apply_weights(model, "fp32", device="cuda") is model
    assert [type(layer) for layer in decoder_layers(model)] == stock
    with pytest.raises(ValueError, match="int8 is a CPU format"):
        apply_weights(model, "int8", device="cuda")
    apply_weights(model, "fp32", device="cpu")
    assert all(type(layer) is FusedDecoderLayer for layer in decoder_layers(model))


def test_serve_weights_setting_validates() -> None:
    yaml = str(REPO / "experiments" / "mixlora_tiny.yaml")
    assert CliRunner().invoke(main, ["validate", yaml, "serve.weights=int8"]).exit_code == 0
    assert CliRunner().invoke(main, ["validate", yaml, "serve.weights=int4"]).exit_code == 0
    result = CliRunner().invoke(main, ["validate", yaml, "serve.weights=int3"])
    assert result.exit_code == 2
    assert "serve.weights: got 'int3', expected one of fp32, int8, int4" in result.stderr


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_generate_with_low_bit_weights_on_a_base(weights: str) -> None:
    result = CliRunner().invoke(main, ["generate", "tiny-llama", "--weights", weights, "--prompt", "Hi",
                                       "--max-tokens", "4"])
    assert result.exit_code == 0, result.output + str(result.exception)


def test_generate_refuses_unknown_weights() -> None:
    result = CliRunner().invoke(main, ["generate", "tiny-llama", "--weights", "int3", "--prompt", "Hi"])
    assert result.exit_code == 2 and "int3" in result.output


def test_families_declare_the_weights_they_take() -> None:
    from dataclasses import replace

    from orchestrator.registry import get_family

    assert get_family("mixlora").weights_error("int8") is None and get_family("dylora").weights_error("int8") is None
    assert get_family("more").weights_error("int8") == "--weights int8: the more family takes fp32"
    assert replace(get_family("more"), weights=("int8",)).contract_errors() == [
        "family more: weights: got ('int8',), expected fp32 and some of fp32, int8, int4"]


def test_a_replica_serves_a_dylora_pool_with_int8_weights(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from support import save_tiny_pool

    from serve.app import replica_app
    from trainables.lm.sections import LMServe
    from trainables.lm.serving import LMEndpoint

    settings = LMServe(weights="int8", max_tokens_limit=4)
    endpoint = LMEndpoint(save_tiny_pool(tmp_path, seed=0, step=3), settings)
    experts = endpoint.current.model.expert_linears()
    assert experts and all(isinstance(e.base, Int8Linear) for e in experts)
    with TestClient(replica_app(endpoint, settings, None, lambda: {})) as client:
        assert client.get("/healthz").json()["weights"] == "int8"
        answer = client.post("/v1/completions", json={"prompt": "def f(", "max_tokens": 3, "temperature": 0})
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
