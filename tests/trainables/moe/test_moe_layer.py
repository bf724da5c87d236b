"""The MoE core against dense references and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.moe import (
    DenseFFN,
    ExpertBank,
    MoELayer,
    dispatch,
    expert_capacity,
    load_balance_loss,
    router_z_loss,
    routing_stats,
)
from trainables.moe.grouped import GroupedFFN
from trainables.moe.router import TopKRouter

D, H = 16, 32


def _layer(num_experts: int, top_k: int, seed: int = 0, **kwargs) -> MoELayer:
    torch.manual_seed(seed)
    return MoELayer(D, num_experts, top_k, H, **kwargs)


def _reference_expert(layer: MoELayer, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e written out by hand from its weights (SwiGLU or GELU)."""
    h = x @ layer.experts.w_in[e]
    if layer.experts.activation == "swiglu":
        gate, up = h[:, :H], h[:, H:]
        h = F.silu(gate) * up
    else:
        h = F.gelu(h)
    return h @ layer.experts.w_out[e]


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_one_expert_moe_equals_dense_ffn_in_outputs_and_gradients(activation: str) -> None:
    moe = _layer(1, 1, activation=activation)
    # the dense reference: the same weights, written out with plain autograd ops
    w_in = moe.experts.w_in.detach()[0].clone().requires_grad_(True)
    w_out = moe.experts.w_out.detach()[0].clone().requires_grad_(True)

    def dense(x: torch.Tensor) -> torch.Tensor:
        h = x @ w_in
        h = F.silu(h[..., :H]) * h[..., H:] if activation == "swiglu" else F.gelu(h)
        return h @ w_out

    x = torch.randn(3, 7, D)
    x_moe, x_dense = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_moe = moe(x_moe).output
    out_dense = dense(x_dense)
    torch.testing.assert_close(out_moe, out_dense)

    grad = torch.randn_like(out_moe)
    out_moe.backward(grad)
    out_dense.backward(grad)
    torch.testing.assert_close(x_moe.grad, x_dense.grad)
    torch.testing.assert_close(moe.experts.w_in.grad[0], w_in.grad)
    torch.testing.assert_close(moe.experts.w_out.grad[0], w_out.grad)
    # and the DenseFFN module (the shared expert) is that same dense FFN
    shared = DenseFFN(D, H, activation)
    with torch.no_grad():
        shared.bank.w_in.copy_(moe.experts.w_in)
        shared.bank.w_out.copy_(moe.experts.w_out)
    torch.testing.assert_close(shared(x), out_dense.detach())


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
def test_grouped_ffn_backward_matches_numerical_gradients(activation: str) -> None:
    torch.manual_seed(0)
    bank = ExpertBank(4, 6, 5, activation).double()
    x = torch.randn(13, 6, dtype=torch.double, requires_grad=True)
    counts = [4, 0, 7, 2]  # an expert with no tokens included
    assert torch.autograd.gradcheck(
        lambda x, w_in, w_out: GroupedFFN.apply(x, w_in, w_out, counts, activation), (x, bank.w_in, bank.w_out)
    )
    # the weight-gradient buffers are not zero-filled up front: the idle expert's slice must still be zeros
    GroupedFFN.apply(x, bank.w_in, bank.w_out, counts, activation).sum().backward()
    assert torch.count_nonzero(bank.w_in.grad[1]) == 0 and torch.count_nonzero(bank.w_out.grad[1]) == 0
    assert torch.count_nonzero(bank.w_in.grad[0]) > 0


def test_top_k_equal_to_num_experts_is_the_dense_softmax_mixture() -> None:
    E = 4
    moe = _layer(E, E, renormalize=False)
    x = torch.randn(10, D)
    probs = torch.softmax(moe.router.gate(x), dim=-1)  # (T, E)
    expected = sum(probs[:, e : e + 1] * _reference_expert(moe, e, x) for e in range(E))
    torch.testing.assert_close(moe(x).output, expected, rtol=1e-5, atol=1e-6)


def test_renormalised_top_k_mixes_the_chosen_experts_by_renormalised_probs() -> None:
    E, k = 4, 2
    moe = _layer(E, k, renormalize=True)
    x = torch.randn(9, D)
    probs = torch.softmax(moe.router.gate(x), dim=-1)
    top_p, top_i = probs.topk(k, dim=-1)
    top_p = top_p / top_p.sum(-1, keepdim=True)
    expected = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(k):
            expected[t] += top_p[t, j] * _reference_expert(moe, int(top_i[t, j]), x[t : t + 1])[0]
    torch.testing.assert_close(moe(x).output, expected, rtol=1e-5, atol=1e-6)


def test_aux_losses_match_hand_computed_values() -> None:
    # 4 tokens, 2 experts, top-1. Probs chosen by hand.
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    indices = torch.tensor([[0], [0], [1], [0]])
    # f = (3/4, 1/4); P = mean probs = (0.65, 0.35); E * sum f P = 2 * (0.4875 + 0.0875)
    assert load_balance_loss(probs, indices).item() == pytest.approx(2 * (0.75 * 0.65 + 0.25 * 0.35))

    # top-2 with 2 experts: every expert gets half the assignments -> E * sum(0.5 * P) = 1
    both = torch.tensor([[0, 1], [1, 0], [0, 1], [1, 0]])
    assert load_balance_loss(probs, both).item() == pytest.approx(1.0)

    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # logsumexp: log 2 and log 4
    expected_z = (math.log(2.0) ** 2 + math.log(4.0) ** 2) / 2
    assert router_z_loss(logits).item() == pytest.approx(expected_z)


def test_layer_returns_the_losses_of_its_own_routing() -> None:
    moe = _layer(4, 2)
    x = torch.randn(32, D)
    out = moe(x)
    probs = torch.softmax(out.router_logits, dim=-1)
    assert out.load_balance_loss.item() == pytest.approx(load_balance_loss(probs, out.expert_indices).item())
    assert out.z_loss.item() == pytest.approx(router_z_loss(out.router_logits).item())
    assert out.load_balance_loss.requires_grad  # flows back into the gate


def test_routing_stats_on_a_hand_built_routing() -> None:
    # 3 experts: tokens per expert (4, 2, 0); probs uniform for token 0, one-hot for token 1.
    probs = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]])
    stats = routing_stats(probs, torch.tensor([4, 2, 0]))
    assert stats.tokens_per_expert.tolist() == [4.0, 2.0, 0.0]
    # entropy: token 0 -> log 3 (normalised 1), token 1 -> 0; mean 0.5
    assert stats.router_entropy.item() == pytest.approx(0.5)
    mean = 2.0
    std = math.sqrt(((4 - mean) ** 2 + (2 - mean) ** 2 + (0 - mean) ** 2) / 3)
    assert stats.load_balance_cv.item() == pytest.approx(std / mean)

    balanced = routing_stats(torch.full((4, 2), 0.5), torch.tensor([3, 3]))
    assert balanced.load_balance_cv.item() == 0.0
    assert balanced.router_entropy.item() == pytest.approx(1.0)


def test_dropless_dispatch_loses_no_token() -> None:
    E, k, T = 8, 2, 257
    moe = _layer(E, k)
    # Make expert 0 very popular so the routing is badly unbalanced.
    with torch.no_grad():
        moe.router.gate.weight[0] += 3.0
    x = torch.randn(T, D)
    out = moe(x)
    assert int(out.stats.tokens_per_expert.sum()) == T * k
    # every token's output equals its own k experts' weighted sum: none is zero or dropped
    route = moe.router(x)
    expected = torch.zeros_like(x)
    for t in range(T):
        for j in range(k):
            expected[t] += route.weights[t, j] * _reference_expert(moe, int(route.indices[t, j]), x[t : t + 1])[0]
    torch.testing.assert_close(out.output, expected, rtol=1e-5, atol=1e-6)


def test_capacity_factor_drops_assignments_past_capacity_in_token_order() -> None:
    E, k, T = 2, 1, 8
    moe = _layer(E, k, capacity_factor=1.0)
    x = torch.randn(T, D)
    weights = torch.ones(T, 1)
    indices = torch.zeros(T, 1, dtype=torch.long)  # everything to expert 0
    capacity = expert_capacity(T, E, k, 1.0)
    assert capacity == 4
    result = dispatch(x, weights, indices, moe.experts, capacity_factor=1.0)
    assert result.dropped == T - capacity
    torch.testing.assert_close(result.output[:capacity], _reference_expert(moe, 0, x[:capacity]))
    assert torch.all(result.output[capacity:] == 0)
    # dropless on the same routing keeps every token
    assert dispatch(x, weights, indices, moe.experts).dropped == 0


def test_shared_expert_adds_a_dense_path() -> None:
    moe = _layer(4, 1, shared_expert_hidden=8)
    x = torch.randn(5, D)
    routed_only = dispatch(x, *moe.router(x)[2:], moe.experts).output
    torch.testing.assert_close(moe(x).output, routed_only + moe.shared_expert(x))


def test_router_jitter_is_applied_in_train_mode_only() -> None:
    moe = _layer(4, 2, router_jitter=0.5)
    x = torch.randn(64, D)
    moe.eval()
    torch.testing.assert_close(moe.router(x).logits, moe.router(x).logits)
    torch.testing.assert_close(moe.router(x).logits, moe.router.gate(x))
    moe.train()
    torch.manual_seed(1)
    first = moe.router(x).logits
    second = moe.router(x).logits
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, moe.router.gate(x))


def test_top_k_above_num_experts_is_refused() -> None:
    with pytest.raises(ValueError, match="top_k"):
        MoELayer(D, 2, 3, H)


@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_choose_routes_as_forward_without_the_full_softmax(top_k: int, renormalize: bool) -> None:
    """``TopKRouter.choose`` (inference's lean routing) gives ``forward``'s logits, experts and weights."""
    torch.manual_seed(0)
    router = TopKRouter(16, 6, top_k, renormalize=renormalize).eval()
    torch.nn.init.normal_(router.gate.weight)  # decisive logits: no near-ties between experts
    x = torch.randn(32, 16)
    logits, weights, indices = router.choose(x)
    route = router(x)
    assert torch.equal(indices, route.indices)
    torch.testing.assert_close(logits, route.logits, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(weights, route.weights, rtol=1e-5, atol=1e-6)
