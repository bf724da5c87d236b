"""MixLoRA's inference fast path (eval mode, no autograd): the same function as the training path,
to float32 rounding, at decode sizes (1 and 7 tokens) and at a prefill (200 tokens, through the
fast path and through the default dispatch); the same routing and stats; the same greedy text
through the generation engine; and training untouched by it."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
import torch
from support import randomize_routing
from torch import nn

from trainables.lm import load_base
from trainables.lm.engine import GenerationEngine, SamplingParams
from trainables.lm.fused import FusedLlamaModel, stacked_linear
from trainables.lm.quantize import Int4Linear, Int8Linear, apply_weights, quantize_base
from trainables.mixlora import mixlora_blocks
from trainables.mixlora.block import MixLoRAFFN
from trainables.mixlora.checkpoint import apply_adapters
from trainables.mixlora.config import MixLoRAConfig
from trainables.mixlora.one_token_kernel import one_token_op

TIGHT = dict(rtol=1e-5, atol=1e-5)  # float32; the paths differ only in summation order
PROMPTS = ["Hello there, how are", "x", "def f(a, b):\n    return"]


@pytest.fixture(scope="module")
def model_and_tokenizer() -> Iterator[tuple]:
    """Tiny Llama with MixLoRA (E = 8, k = 2): random non-zero LoRA B (fresh ones are zero) and a
    decisive router (no near-ties between the experts' scores)."""
    torch.manual_seed(0)
    model, tokenizer = load_base("tiny-llama")
    apply_adapters(model, MixLoRAConfig(num_experts=8, top_k=2, rank=4, alpha=8, dropout=0.0, attention_lora=False))
    randomize_routing(model)
    yield model.eval(), tokenizer


def _set(model: torch.nn.Module, fast: bool, tokens: tuple[int, int] | None = None) -> None:
    """Switch the fast path on or off, with (min, max) token bounds (default: the class's)."""
    low, high = tokens or (MixLoRAFFN.inference_min_tokens, MixLoRAFFN.inference_max_tokens)
    for block in mixlora_blocks(model):
        block.fast_inference, block.inference_min_tokens, block.inference_max_tokens = fast, low, high


def _run(model: torch.nn.Module, ids: torch.Tensor, fast: bool, tokens: tuple[int, int] | None) -> tuple:
    """Logits and each block's ``MoEOutput`` of one eval forward under ``torch.no_grad``."""
    _set(model, fast, tokens)
    try:
        with torch.no_grad():
            logits = model(ids).logits
        return logits, [block.last for block in mixlora_blocks(model)]
    finally:
        _set(model, True)


@pytest.mark.parametrize(
    ("shape", "tokens"),
    [((1, 1), (1, 128)), ((1, 1), None), ((7, 1), None), ((1, 7), None), ((2, 100), (1, 1000)), ((2, 100), None)],
    ids=["N=1 fast", "N=1 default", "N=7 decode", "N=7 prompt", "N=200 fast", "N=200 default (sorted)"],
)
def test_fast_path_equals_the_training_path(model_and_tokenizer: tuple, shape: tuple, tokens: tuple | None) -> None:
    model, _ = model_and_tokenizer
    ids = torch.randint(3, 259, shape, generator=torch.Generator().manual_seed(sum(shape)))
    fast_logits, fast = _run(model, ids, True, tokens)
    ref_logits, ref = _run(model, ids, False, tokens)
    torch.testing.assert_close(fast_logits, ref_logits, **TIGHT)
    for f, r in zip(fast, ref, strict=True):
        torch.testing.assert_close(f.output, r.output, **TIGHT)
        # the second layer's inputs differ by rounding, and its N(0, 1) router sums them into logits of ~10
        torch.testing.assert_close(f.router_logits, r.router_logits, rtol=1e-5, atol=1e-4)
        assert torch.equal(f.expert_indices, r.expert_indices)
        assert torch.equal(f.stats.tokens_per_expert, r.stats.tokens_per_expert)
        torch.testing.assert_close(f.stats.router_entropy, r.stats.router_entropy)
        torch.testing.assert_close(f.stats.load_balance_cv, r.stats.load_balance_cv)
        assert math.isnan(f.load_balance_loss.item()) and math.isnan(f.z_loss.item())  # skipped at inference
        assert not math.isnan(r.load_balance_loss.item())


def _frozen_as(block: MixLoRAFFN, frozen: str) -> None:
    """Give ``block``'s frozen projections the form a loader gives them: ``separate`` (as trained),
    ``stacked`` (gate and up as one ``gate_up_proj``, as fused for inference), ``stacked int8`` / ``int4``
    (and low-bit, ``trainables.lm.quantize``)."""
    if frozen == "separate":
        return
    block.fuse_for_inference()
    if frozen != "stacked":
        low_bit = Int8Linear if frozen.endswith("int8") else Int4Linear
        block.gate_up_proj, block.down_proj = low_bit(block.gate_up_proj), low_bit(block.down_proj)


@pytest.mark.parametrize("frozen", ["separate", "stacked", "stacked int8", "stacked int4"])
@pytest.mark.parametrize("top_k", [1, 2])
@torch.no_grad()
def test_one_token_reads_the_chosen_experts_factors_in_place(top_k: int, frozen: str) -> None:
    """``_mix_one_token`` (the chosen experts' factors as strided views of one buffer, the frozen projections
    as row kernels where they are stacked) against the dense one-hot path (the projections called as
    modules), for every choice of experts in either order, then again after a factor changed."""
    torch.manual_seed(0)
    d_model, hidden = 64, 96  # shapes the int4 kernel takes (gate|up 192 x 64, down 64 x 96)
    block = MixLoRAFFN(nn.Linear(d_model, hidden, bias=False), nn.Linear(d_model, hidden, bias=False),
                       nn.Linear(hidden, d_model, bias=False), num_experts=4, top_k=top_k, rank=2, alpha=4,
                       dropout=0.0).eval()
    for bank in (block.lora_gate, block.lora_up, block.lora_down):
        bank.B.normal_()
    _frozen_as(block, frozen)
    x = torch.randn(1, d_model)
    for experts in itertools.permutations(range(4), top_k):
        indices, weights = torch.tensor([experts]), torch.rand(1, top_k)
        weights /= weights.sum()
        torch.testing.assert_close(block._mix_one_token(x, weights, indices),
                                   block._mix_experts_inference(x, weights, indices), **TIGHT)
    block.lora_down.B.mul_(2.0)  # an in-place update: the cached factor rows must follow it
    torch.testing.assert_close(block._mix_one_token(x, weights, indices),
                               block._mix_experts_inference(x, weights, indices), **TIGHT)


def _one_token_path(patch: pytest.MonkeyPatch, path: str) -> list[int]:
    """Serve one token through ``path``: ``kernel`` (our C++ op, ``trainables/mixlora/one_token_kernel.py``)
    or ``torch`` (the kernel turned off); returns a list that counts the kernel's calls."""
    calls: list[int] = []
    if path == "torch":
        patch.setattr("trainables.mixlora.block.one_token_op", lambda: None)
        return calls
    op = one_token_op()
    assert op is not None, "the MixLoRA one-token kernel did not build here (see the warning logged)"
    patch.setattr("trainables.mixlora.block.one_token_op", lambda: lambda *args: calls.append(1) or op(*args))
    return calls


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize(("top_k", "renormalize"), [(1, True), (2, True), (3, True), (2, False)])
@torch.no_grad()
def test_one_token_is_routed_as_the_router_routes_it(top_k: int, renormalize: bool, path: str) -> None:
    """A served forward of one token (the router's top-k taken from its logits, not its module; by our
    kernel, or by torch ops) against the training path (the router's module, the sorted dispatch): the
    same output, experts, logits and stats; with top-1, or without renormalising, each expert keeps its
    full-softmax weight, as the router gives it (it renormalises only k > 1)."""
    torch.manual_seed(0)
    d_model, hidden = 16, 24
    block = MixLoRAFFN(nn.Linear(d_model, hidden, bias=False), nn.Linear(d_model, hidden, bias=False),
                       nn.Linear(hidden, d_model, bias=False), num_experts=4, top_k=top_k, rank=2, alpha=4,
                       dropout=0.0)
    block.router.renormalize = renormalize
    block.router.gate.weight.normal_()
    for bank in (block.lora_gate, block.lora_up, block.lora_down):
        bank.B.normal_()
    block.gate_up_proj = stacked_linear(block.gate_proj, block.up_proj)  # as served; the modules stay for training
    with pytest.MonkeyPatch.context() as patch:
        calls = _one_token_path(patch, path)
        for x in torch.randn(8, 1, d_model):
            served, trained = block.eval()(x), block.train()(x)  # no autograd: eval serves, training does not
            torch.testing.assert_close(served.output, trained.output, **TIGHT)
            assert torch.equal(served.expert_indices, trained.expert_indices)
            torch.testing.assert_close(served.router_logits, trained.router_logits, **TIGHT)
            torch.testing.assert_close(served.stats.router_entropy, trained.stats.router_entropy, **TIGHT)
            assert torch.equal(served.stats.tokens_per_expert, trained.stats.tokens_per_expert)
    assert len(calls) == (8 if path == "kernel" else 0)


@pytest.mark.parametrize("frozen", ["stacked int8", "stacked int4"])
@torch.no_grad()
def test_one_token_by_the_kernel_equals_the_torch_path_with_low_bit_weights(frozen: str) -> None:
    """With low-bit frozen projections (their kernels on both paths) our one-token kernel gives the torch
    path's output, experts and weights, every factor change followed."""
    torch.manual_seed(0)
    d_model, hidden = 64, 96  # shapes the int4 kernel takes
    block = MixLoRAFFN(nn.Linear(d_model, hidden, bias=False), nn.Linear(d_model, hidden, bias=False),
                       nn.Linear(hidden, d_model, bias=False), num_experts=4, top_k=2, rank=2, alpha=4,
                       dropout=0.0).eval()
    block.router.gate.weight.normal_()
    for bank in (block.lora_gate, block.lora_up, block.lora_down):
        bank.B.normal_()
    _frozen_as(block, frozen)
    xs = torch.randn(6, 1, d_model)
    for step in range(2):
        with pytest.MonkeyPatch.context() as patch:
            _one_token_path(patch, "torch")
            by_torch = [block(x) for x in xs]
        with pytest.MonkeyPatch.context() as patch:
            calls = _one_token_path(patch, "kernel")
            by_kernel = [block(x) for x in xs]
        assert len(calls) == len(xs)
        for k, t in zip(by_kernel, by_torch, strict=True):
            # the low-bit kernels round their input to bfloat16: summed in another order, one value may round apart
            torch.testing.assert_close(k.output, t.output, rtol=1e-2, atol=1e-2)
            assert torch.equal(k.expert_indices, t.expert_indices)
            torch.testing.assert_close(k.router_logits, t.router_logits, **TIGHT)
        block.lora_down.B.mul_(2.0)  # an in-place update: the kernel reads the factors as they are now
        assert step == 1 or not torch.allclose(block(xs[0]).output, by_kernel[0].output)


@pytest.mark.parametrize("bits", [8, 4])
@torch.no_grad()
def test_quantizing_after_a_forward_computes_with_the_low_bit_weights(bits: int) -> None:
    """The fused layers' plans and MixLoRA's frozen kernels are bound at a first forward; quantizing after
    one (``quantize_base`` replaces the projections) must rebind them, giving what a model quantized before
    any forward gives."""
    def fused_model() -> nn.Module:
        torch.manual_seed(0)
        model, _ = load_base("tiny-llama")
        apply_adapters(model, MixLoRAConfig(num_experts=4, top_k=2, rank=4, alpha=8, dropout=0.0,
                                            attention_lora=False))
        randomize_routing(model)
        return apply_weights(model.eval(), "fp32")

    ids = torch.randint(3, 259, (1, 1), generator=torch.Generator().manual_seed(2))  # one token: the one-token path
    late = fused_model()
    before = late(ids).logits
    quantize_base(late, bits)
    early = fused_model()
    assert type(early.model) is FusedLlamaModel
    quantize_base(early, bits)
    assert not torch.equal(late(ids).logits, before)
    torch.testing.assert_close(late(ids).logits, early(ids).logits, rtol=0, atol=0)


def test_greedy_text_through_the_engine_is_unchanged(model_and_tokenizer: tuple) -> None:
    model, tokenizer = model_and_tokenizer
    texts = {}
    for fast in (True, False):
        _set(model, fast)
        engine = GenerationEngine(model, tokenizer, max_batch_size=2)  # three requests, two rows: joins mid-decode
        try:
            streams = [engine.submit(tokenizer(p, add_special_tokens=False)["input_ids"],
                                     SamplingParams(max_tokens=12, temperature=0)) for p in PROMPTS]
            answers = [s.collect() for s in streams]
        finally:
            engine.close()
            _set(model, True)
        texts[fast] = [(a.text, a.moe) for a in answers]
    assert texts[True] == texts[False]
    assert any(text for text, _ in texts[True])


def test_training_and_eval_with_autograd_take_the_original_path(model_and_tokenizer: tuple) -> None:
    model, _ = model_and_tokenizer
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(1))
    calls = []
    original = MixLoRAFFN._mix_experts_inference

    def spy(self: MixLoRAFFN, *args: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return original(self, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MixLoRAFFN, "_mix_experts_inference", spy)
        try:
            model.train()  # dropout 0: the same function as eval
            train_logits = model(ids).logits
            losses = [block.last.load_balance_loss for block in mixlora_blocks(model)]
            model.eval()
            grad_logits = model(ids).logits  # eval, autograd on
            assert calls == []
            assert all(torch.isfinite(loss) for loss in losses) and train_logits.requires_grad
            with torch.no_grad():
                fast_logits = model(ids).logits
            assert len(calls) == len(mixlora_blocks(model))
        finally:
            model.eval()
    assert torch.equal(train_logits, grad_logits)
    torch.testing.assert_close(fast_logits, grad_logits.detach(), **TIGHT)


def test_generate_streams_its_pieces_from_the_callers_thread() -> None:
    """``generate`` decodes in the thread that loaded the model (one OpenMP team, ``trainables/openmp.py``),
    handing every piece to ``on_text`` as it comes; the pieces make the returned completion."""
    import threading

    from trainables.mixlora.generation import generate

    pieces: list[tuple[str, threading.Thread]] = []
    text = generate(None, "tiny-llama", "Hello", 12, lambda piece: pieces.append((piece, threading.current_thread())))
    assert pieces and "".join(p for p, _ in pieces) == text
    assert all(thread is threading.current_thread() for _, thread in pieces)
