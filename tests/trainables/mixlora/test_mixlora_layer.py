"""MixLoRA against its naive reference, the frozen base MLP, and its parameter budget."""

from __future__ import annotations

import copy

import pytest
import torch
from reference_mixlora import MixLoRANaive  # benchmarks/, on the pythonpath (pyproject.toml)
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from trainables.lm import tiny_llama
from trainables.mixlora import (
    MixLoRAFFN,
    MixLoRALayerConfig,
    MixLoRAMLP,
    apply_attention_lora,
    apply_lora,
    apply_mixlora,
    freeze_base,
    lora_parameters_per_rank,
    matched_lora_rank,
    mixlora_parameters,
    router_outputs,
)

D, H = 16, 32
SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> LlamaMLP:
    torch.manual_seed(seed)
    return LlamaMLP(LlamaConfig(hidden_size=D, intermediate_size=H, num_attention_heads=2, hidden_act="silu")).to(dtype)


def _pair(cfg: MixLoRALayerConfig, dtype: torch.dtype = torch.float64) -> tuple[MixLoRAFFN, MixLoRANaive]:
    """Ours and the naive reference with the same (non-zero) weights."""
    ours = MixLoRAFFN.from_mlp(_mlp(dtype=dtype), cfg)
    with torch.no_grad():
        for bank in (ours.lora_gate, ours.lora_up, ours.lora_down):
            bank.B.normal_(std=0.1)
        ours.router.gate.weight.normal_(std=0.5)
    naive = MixLoRANaive.from_mlp(_mlp(dtype=dtype), cfg)
    naive.load_state_dict(ours.state_dict())
    return ours, naive


def _trainable(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("num_experts", "top_k", "tokens"),
    [(8, 2, (2, 24)), (4, 1, (1, 10)), (8, 2, (1, 3)), (3, 3, (2, 5))],  # (1, 3): idle experts
)
def test_ours_equals_naive_in_outputs_and_gradients(num_experts: int, top_k: int, tokens: tuple[int, int]) -> None:
    cfg = MixLoRALayerConfig(num_experts=num_experts, top_k=top_k, rank=4, alpha=8, dropout=0.1)
    ours, naive = _pair(cfg)
    ours.eval(), naive.eval()  # dropout off: both must compute the same function
    x = torch.randn(*tokens, D, dtype=torch.float64)
    results = []
    for block in (ours, naive):
        xi = x.clone().requires_grad_(True)
        out = block(xi)
        (out.output.square().sum() + out.load_balance_loss).backward()
        results.append((out, xi.grad, {n: p.grad for n, p in _trainable(block).items()}))
    (o1, gx1, g1), (o2, gx2, g2) = results
    assert o1.output.shape == x.shape
    torch.testing.assert_close(o1.output, o2.output)
    torch.testing.assert_close(o1.router_logits, o2.router_logits)
    torch.testing.assert_close(o1.stats.tokens_per_expert, o2.stats.tokens_per_expert)
    torch.testing.assert_close(gx1, gx2)
    assert g1.keys() == g2.keys() and len(g1) == 7  # router + A, B of gate, up, down
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], msg=name)


def test_one_expert_with_zero_lora_b_is_the_frozen_base_mlp_exactly() -> None:
    mlp = _mlp(dtype=torch.float32)
    block = MixLoRAFFN.from_mlp(copy.deepcopy(mlp), MixLoRALayerConfig(num_experts=1, top_k=1)).eval()
    x = torch.randn(2, 7, D)
    out = block(x)
    assert torch.equal(out.output, mlp(x))
    assert out.load_balance_loss.item() == pytest.approx(1.0)
    assert out.stats.tokens_per_expert.tolist() == [14.0]


def test_only_lora_and_router_are_trainable_and_the_base_gets_no_grad() -> None:
    ours, _ = _pair(MixLoRALayerConfig())
    names = sorted(_trainable(ours))
    assert names == [
        "lora_down.A",
        "lora_down.B",
        "lora_gate.A",
        "lora_gate.B",
        "lora_up.A",
        "lora_up.B",
        "router.gate.weight",
    ]
    ours.train()
    ours(torch.randn(5, D, dtype=torch.float64)).output.sum().backward()
    for proj in (ours.gate_proj, ours.up_proj, ours.down_proj):
        assert not proj.weight.requires_grad and proj.weight.grad is None
    assert all(p.grad is not None for p in _trainable(ours).values())


def test_the_block_shares_the_base_weights_and_starts_as_the_base() -> None:
    mlp = _mlp(dtype=torch.float32)
    block = MixLoRAFFN.from_mlp(mlp)  # fresh: B = 0, so every expert is the base FFN
    assert block.gate_proj.weight is mlp.gate_proj.weight
    assert block.router.gate.weight.std().item() == pytest.approx(0.02, rel=0.3)
    x = torch.randn(9, D)
    torch.testing.assert_close(block.eval()(x).output, mlp(x))  # renormalised weights sum to 1


def test_apply_mixlora_on_tiny_llama_keeps_shapes_and_the_loss_backprops() -> None:
    model, _ = tiny_llama("bytes")
    ids = torch.randint(3, 259, (2, 12))
    before = model(ids).logits
    cfg = MixLoRALayerConfig(num_experts=4, top_k=2, rank=4, alpha=8)
    apply_mixlora(model, cfg)
    assert all(isinstance(layer.mlp, MixLoRAMLP) for layer in model.model.layers)
    model.train()
    out = model(ids, labels=ids)
    assert out.logits.shape == before.shape
    routed = router_outputs(model)
    assert len(routed) == model.config.num_hidden_layers
    assert all(r.stats.tokens_per_expert.sum().item() == 2 * 12 * 2 for r in routed)
    aux = torch.stack([r.load_balance_loss for r in routed]).mean()
    (out.loss + 0.01 * aux).backward()
    assert router_outputs(model) == []  # cleared by the first call

    trainable = _trainable(model)
    assert sum(p.numel() for p in trainable.values()) == mixlora_parameters(model.config, cfg)
    assert all(("lora_" in n or ".router." in n) for n in trainable)
    assert any(".self_attn.q_proj.lora_A" in n for n in trainable)
    assert all(p.grad is not None for p in trainable.values())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    # a fresh MixLoRA model (all B = 0) computes what the base computed
    model.eval()
    torch.testing.assert_close(model(ids).logits, before)


def test_attention_lora_keeps_mixlora_trainable_whichever_comes_first() -> None:
    model, _ = tiny_llama("bytes")
    apply_attention_lora(model, rank=2, alpha=4, dropout=0.0)
    apply_mixlora(model, MixLoRALayerConfig(num_experts=2, top_k=1, rank=2, attention_lora=False))
    trainable = _trainable(model)
    assert any("self_attn.v_proj.lora_B" in n for n in trainable)
    assert any("mlp.router.gate.weight" in n for n in trainable)
    assert not any("base_layer" in n or "embed" in n for n in trainable)


def test_peft_lora_counts_match_the_analytic_budget() -> None:
    model, _ = tiny_llama("bytes")
    freeze_base(model)
    apply_lora(model, rank=3, alpha=6, dropout=0.0, targets=SEVEN)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 3 * lora_parameters_per_rank(model.config, SEVEN)


@pytest.mark.parametrize(
    "shape",
    [
        dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),  # tiny-llama
        dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3),  # SmolLM2
    ],
)
@pytest.mark.parametrize(
    "cfg", [MixLoRALayerConfig(), MixLoRALayerConfig(num_experts=4, rank=16, attention_lora=False)]
)
def test_matched_lora_rank_is_within_ten_percent(shape: dict, cfg: MixLoRALayerConfig) -> None:
    config = LlamaConfig(num_hidden_layers=3, **shape)
    rank = matched_lora_rank(config, cfg)
    lora = rank * lora_parameters_per_rank(config, SEVEN)
    mixlora = mixlora_parameters(config, cfg)
    assert abs(lora - mixlora) / mixlora <= 0.10
    if shape["hidden_size"] == 576 and cfg == MixLoRALayerConfig():
        assert rank == 43


def test_matched_lora_rank_agrees_with_real_modules() -> None:
    cfg = MixLoRALayerConfig(num_experts=4, top_k=2, rank=4)
    mix, _ = tiny_llama("bytes")
    apply_mixlora(mix, cfg)
    plain, _ = tiny_llama("bytes")
    freeze_base(plain)
    apply_lora(plain, rank=matched_lora_rank(plain.config, cfg), alpha=8, dropout=0.0, targets=SEVEN)
    n_mix, n_plain = (sum(p.numel() for p in m.parameters() if p.requires_grad) for m in (mix, plain))
    assert abs(n_plain - n_mix) / n_mix <= 0.10


def test_lora_dropout_acts_in_training_only() -> None:
    ours, _ = _pair(MixLoRALayerConfig(num_experts=4, top_k=2, rank=4, dropout=0.5))
    x = torch.randn(6, D, dtype=torch.float64)
    ours.train()
    assert not torch.equal(ours(x).output, ours(x).output)
    ours.eval()
    assert torch.equal(ours(x).output, ours(x).output)
