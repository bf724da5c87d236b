"""MixLoRA: top-k routed LoRA experts inside the frozen FFN of a causal LM.

After Li et al. 2024, "MixLoRA: Enhancing Large Language Models Fine-Tuning with
LoRA-based Mixture of Experts" (TUDB-Labs/MixLoRA). The frozen SwiGLU FFN of a decoder
layer,

    ffn(x) = W_down · (silu(W_gate · x) * (W_up · x)),

becomes E experts that all share its frozen weights; expert e adds its own LoRA pair
``(A_e^p, B_e^p)`` (rank r, scale alpha / r, dropout on the LoRA input) to each
projection p of gate, up and down:

    p_e(x)    = W_p · x + (alpha / r) · B_e^p A_e^p · dropout(x)
    expert_e  = down_e(silu(gate_e(x)) * up_e(x))
    output(x) = Σ_{e in top-k(x)} w_e(x) · expert_e(x),  w = softmax(router(x)) over the k chosen, renormalised

The router is a bias-free linear gate (init N(0, 0.02²)) over E experts, top-k per token
(defaults E = 8, k = 2). The block returns ``trainables.moe.MoEOutput``: the output, the
router logits, the *unweighted* Switch load-balance loss of ``trainables.moe.losses`` and
the routing stats; the training loop applies the coefficient. (MixLoRA, like HF Mixtral,
normalises the loss's token fractions by T rather than by T·k, so its loss is k times
this one: a coefficient c there is c·k here.)

Where the time goes (``MixLoRAFFN``): the frozen gate and up projections run once per
token for all experts, on all T tokens. The T·k (token, expert) assignments are then
grouped by expert with one stable sort (as ``trainables/moe/dispatch.py`` does), and each
expert runs only its LoRA deltas, the activation and the down path (frozen down + its
LoRA) on its contiguous rows. So a token costs 2 + k frozen projections, against 3k for
an expert-by-expert FFN (``MixLoRANaive`` in ``benchmarks/reference_mixlora.py``, the reference the
tests and the benchmark compare against).
The LoRA deltas are added by ``addmm`` with the alpha/r scale folded in, and the per-expert
results are concatenated once, at width D. (Measured and rejected on CPU: one fused
(T, 2H) gate|up matmul, whose strided halves slowed the elementwise work more than the
fusion saved; the frozen down as one (T·k, H) matmul, which needs an extra (T·k, H)
concatenation of the activations.) Dropout on the gate/up LoRA input is drawn once per token
and shared by its k experts' gate and up LoRA, as a single dropout before a fused
``[A_gate | A_up]`` would (the naive reference draws a mask per expert and projection): at
dropout > 0, drawing the random masks was about a fifth of the block's time.

Served (eval mode, no autograd), an input of 1 to 128 tokens (decoding, batched or not) skips the
sort and the loop over experts: ``_mix_experts_inference`` runs each LoRA stage as one matmul over all
E experts' stacked factors (stacked once and cached, ``_stacked_factors``) with the unchosen ones
masked to zero, gate and up side by side, and applies the frozen down projection once per token, to
the router-weighted sum of its k activations (it is linear); one token on the CPU (decoding one sequence)
reads only its k chosen experts' factors: routed and mixed in one call of our C++ kernel
(``trainables.mixlora.one_token_kernel``; ``_serve_one_token_by_kernel``) where it is built, otherwise in
place by torch ops (``_mix_one_token``, k <= 2), with a lean top-k of the router's logits; the frozen
projections are row kernels (``trainables.lm.fused.row_kernel``) either way (``benchmarks/decode.py``,
SmolLM2 at batch 1: time per token 1.18-1.28x the base's with int8 weights and 1.21-1.30x with int4 with
the kernel; 1.37-1.39x and 1.58-1.61x by torch ops). The
training losses are skipped, and a ``MixLoRAMLP`` computes the routing stats only when ``last`` is read
(see ``MixLoRAFFN.forward``).
On the inference paths the attention LoRA is merged into the frozen weights
(``checkpoint.prepare_for_inference``).

Served, a ``MixLoRAMLP`` reports its top-k choices to the generation engine
(``pop_expert_choices``), which answers each request with a per-layer count of the experts its
generated tokens were routed to. Putting the blocks into a model: ``surgery.py``; their
trainable-parameter budget: ``params.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import SiLUActivation

from trainables.lm.fused import RowKernel, plain_linears, row_kernel, stacked_linear
from trainables.mixlora.config import MixLoRALayerConfig
from trainables.mixlora.one_token_kernel import one_token_op
from trainables.moe.layer import MoEOutput
from trainables.moe.losses import load_balance_loss, router_z_loss, routing_stats
from trainables.moe.router import TopKRouter

# ---------------------------------------------------------------------------- parts


class LoRABank(nn.Module):
    """E independent LoRA pairs for one projection ``in_features -> out_features``.

    ``A`` (E, in, r) is initialised like peft's (kaiming-uniform, bound 1/sqrt(in)) and
    ``B`` (E, r, out) to zeros, so a fresh bank adds nothing.
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.scaling = alpha / rank
        self.A = nn.Parameter(torch.empty(num_experts, in_features, rank))  # (E, in, r)
        self.B = nn.Parameter(torch.zeros(num_experts, rank, out_features))  # (E, r, out)
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.A, -bound, bound)

    def forward(self, x: torch.Tensor, expert: int, base: torch.Tensor | None = None) -> torch.Tensor:
        """``base + (alpha/r) · x A_e B_e`` for expert e (the delta alone if no base).

        x: (n, in); base: (n, out) or None; returns (n, out). With a base, one ``addmm``
        adds the scaled delta, with no separate scale or add pass over (n, out).
        """
        z = x @ self.A[expert]  # (n, r)
        if base is None:
            return z @ self.B[expert] * self.scaling
        return torch.addmm(base, z, self.B[expert], alpha=self.scaling)


class StackedFactors(NamedTuple):
    """Every expert's LoRA factors of one block, stacked for ``MixLoRAFFN._mix_experts_inference``
    (alpha / r folded into the B factors); column/row ``e·r + i`` is rank component i of expert e."""

    a_gate_up: torch.Tensor  # (2, D, E·r): gate's, up's
    b_gate_up: torch.Tensor  # (2, E·r, H): gate's, up's
    a_down: torch.Tensor  # (H, E·r)
    b_down: torch.Tensor  # (E·r, D)


# ---------------------------------------------------------------------------- the block


class MixLoRAFFN(nn.Module):
    """A frozen SwiGLU FFN turned into E top-k routed LoRA experts that share its weights.

    Args:
        gate_proj, up_proj, down_proj: the frozen base projections (D -> H, D -> H, H -> D),
            shared, not copied; their parameters are set to ``requires_grad=False``.
        act_fn: the base MLP's activation (SiLU for Llama/Mistral/Qwen).
        num_experts, top_k, rank, alpha, dropout, router_init_std, router_jitter: as in
            ``MixLoRALayerConfig``.
    """

    def __init__(
        self,
        gate_proj: nn.Linear,
        up_proj: nn.Linear,
        down_proj: nn.Linear,
        act_fn: Callable[[torch.Tensor], torch.Tensor] = F.silu,
        num_experts: int = 8,
        top_k: int = 2,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.05,
        router_init_std: float = 0.02,
        router_jitter: float = 0.0,
    ) -> None:
        super().__init__()
        for proj in (gate_proj, up_proj, down_proj):
            if getattr(proj, "bias", None) is not None:
                raise ValueError("MixLoRA expects bias-free FFN projections (Llama/Mistral/Qwen MLPs)")
            proj.requires_grad_(False)
        d_model, hidden = gate_proj.in_features, gate_proj.out_features
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj
        self.act_fn = act_fn
        self.num_experts, self.top_k = num_experts, top_k
        self.router = TopKRouter(d_model, num_experts, top_k, renormalize=True, jitter=router_jitter)
        nn.init.normal_(self.router.gate.weight, std=router_init_std)
        factory = dict(device=gate_proj.weight.device, dtype=gate_proj.weight.dtype)
        self.router.to(**factory)
        self.lora_gate = LoRABank(num_experts, d_model, hidden, rank, alpha).to(**factory)
        self.lora_up = LoRABank(num_experts, d_model, hidden, rank, alpha).to(**factory)
        self.lora_down = LoRABank(num_experts, hidden, d_model, rank, alpha).to(**factory)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # eval mode without autograd skips the losses, and mixes inference_min_tokens..inference_max_tokens
    # tokens through ``_mix_experts_inference`` (others through the sorted ``_mix_experts``). Measured
    # on SmolLM2's shape (D 576, H 1536, E = r = 8) with one and two CPU threads, the loop-free path
    # took 0.55-0.7x the sorted one's time at 4-64 tokens, 0.8-0.9x at 128, and is slower from 256
    # tokens (its LoRA matmuls span all E experts' factors). At 1 token it took 1.05-1.15x while it
    # re-stacked the factors on every call; with them cached (``_stacked_factors``) it runs fewer
    # kernels than the sorted path (no sort, no host sync, no per-expert loop), so decoding at batch 1
    # takes it too.
    fast_inference: bool = True
    inference_min_tokens: int = 1
    inference_max_tokens: int = 128
    _stacked: tuple[tuple, StackedFactors] | None = None  # (the factors' versions, ``_stacked_factors``)
    _expert_rows_cache: tuple[tuple, torch.Tensor] | None = None  # (the factors' versions, ``_expert_rows``)
    _kernels: tuple[RowKernel | None, RowKernel | None] | None = None  # ``_frozen_kernels``
    _chosen_views: tuple[torch.Tensor, dict] | None = None  # (rows viewed, {expert ids: views}), ``_chosen_factors``

    @classmethod
    def from_mlp(cls, mlp: nn.Module, cfg: MixLoRALayerConfig | None = None) -> MixLoRAFFN:
        """Wrap a Llama-style MLP (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``)."""
        cfg = cfg or MixLoRALayerConfig()
        return cls(
            mlp.gate_proj,
            mlp.up_proj,
            mlp.down_proj,
            getattr(mlp, "act_fn", F.silu),
            num_experts=cfg.num_experts,
            top_k=cfg.top_k,
            rank=cfg.rank,
            alpha=cfg.alpha,
            dropout=cfg.dropout,
            router_init_std=cfg.router_init_std,
            router_jitter=cfg.router_jitter,
        )

    def forward(self, x: torch.Tensor) -> MoEOutput:
        """``x``: (..., D), e.g. (B, T, D); every leading position is a token.

        In eval mode with autograd off (serving, evaluation) and ``fast_inference`` set, inputs of
        ``inference_min_tokens`` to ``inference_max_tokens`` tokens run through
        ``_mix_experts_inference`` (others through ``_mix_experts``), and the two losses are not
        computed: ``load_balance_loss`` and ``z_loss`` are then NaN placeholders (only training
        reads them; NaN makes a stray reader loud). The router logits, expert indices and
        routing stats are always the real ones (evaluation, ``measure_routing`` and
        ``pop_expert_choices`` read them). Training, or any call that may need gradients, takes
        the original path unchanged.
        """
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (T, D)
        if self.serving():
            return self._served_output(self._serve(tokens, shape))
        route = self.router(tokens)
        mixed, tokens_per_expert = self._mix_experts(tokens, route.weights, route.indices)  # (T, D), (E,)
        return MoEOutput(
            output=mixed.reshape(shape),
            router_logits=route.logits,
            load_balance_loss=load_balance_loss(route.probs, route.indices),
            z_loss=router_z_loss(route.logits),
            stats=routing_stats(route.probs, tokens_per_expert),
            expert_indices=route.indices,
        )

    def fuse_for_inference(self) -> None:
        """For inference only (``trainables.lm.fused``): the frozen gate and up projections as one
        ``gate_up_proj`` (stacked weights, one matmul a token instead of two), where both are plain
        ``nn.Linear``. Afterwards the model is not for training or for saving as a checkpoint."""
        if plain_linears(self.gate_proj, self.up_proj):
            self.gate_up_proj = stacked_linear(self.gate_proj, self.up_proj)
            del self.gate_proj, self.up_proj
        one_token_op()  # our one-token kernel built (once per machine) or loaded now, not at the first request

    def _frozen_gate_up(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen gate and up projections of ``x`` (T, D): two (T, H)."""
        if "gate_up_proj" in self._modules:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return gate, up
        return self.gate_proj(x), self.up_proj(x)

    def serving(self) -> bool:
        """Whether a forward now takes the served path: eval mode, autograd off, ``fast_inference`` set."""
        return self.fast_inference and not self.training and not torch.is_grad_enabled()

    def _serve(self, tokens: torch.Tensor, shape: torch.Size) -> _Served:
        """The served forward of ``tokens`` (T, D), its output shaped ``shape``: ``_mix_one_token`` for one
        token on the CPU with top-1 or top-2 routing (decoding one sequence), ``_mix_experts_inference`` up
        to ``inference_max_tokens`` tokens, the sorted dispatch otherwise (a long prefill).

        One token on the CPU takes our C++ kernel where it can (``_serve_one_token_by_kernel``); otherwise it
        is routed by ``TopKRouter.choose`` (its choice without the full softmax). The full softmax is
        computed only if ``MixLoRAMLP.last`` is read (``_served_output``)."""
        num_tokens = tokens.shape[0]
        if num_tokens == 1 and self.inference_min_tokens <= 1 and tokens.device.type == "cpu":
            served = self._serve_one_token_by_kernel(tokens, shape)
            if served is not None:
                return served
            if self.top_k <= 2:
                logits, weights, indices = self.router.choose(tokens)  # (1, E), (1, k), (1, k)
                return _Served(self._mix_one_token(tokens, weights, indices).view(shape), logits, weights, indices)
        route = self.router(tokens)
        if self.inference_min_tokens <= num_tokens <= self.inference_max_tokens:  # decoding
            mixed = self._mix_experts_inference(tokens, route.weights, route.indices)
        else:
            mixed = self._mix_experts(tokens, route.weights, route.indices)[0]
        return _Served(mixed.reshape(shape), route.logits, route.weights, route.indices)

    def _serve_one_token_by_kernel(self, tokens: torch.Tensor, shape: torch.Size) -> _Served | None:
        """One float32 token (1, D) on the CPU through ``trainables.mixlora.one_token_kernel`` (the router's
        choice and the chosen experts' LoRA in one C++ call), the frozen gate|up and down as their row
        kernels around it; None where the kernel does not apply (turned off or not built, another
        activation than SiLU, unstacked frozen projections, another dtype): the torch path then."""
        op = one_token_op()
        if op is None or tokens.dtype != torch.float32 or not _is_silu(self.act_fn):
            return None
        gate_up, down = self._frozen_kernels()
        if gate_up is None or down is None:
            return None
        mixed, lora, logits, weights, indices = op(tokens, gate_up(tokens), self.router.gate.weight,
                                                   self._expert_rows(), self.top_k, self.router.renormalize,
                                                   self.lora_gate.A.shape[-1])  # (1, H), (1, D), (1, E), (1, k)x2
        return _Served((down(mixed) + lora).view(shape), logits, weights, indices)  # low-bit down: bf16 promoted

    def _served_output(self, served: _Served) -> MoEOutput:
        """The ``MoEOutput`` of a served forward: NaN losses (only training reads them), real routing."""
        nan = served.output.new_full((), float("nan"))
        probs = F.softmax(served.logits, dim=-1, dtype=torch.float32)  # (T, E), as the router computes them
        tokens_per_expert = torch.bincount(served.indices.reshape(-1), minlength=self.num_experts)  # (E,)
        return MoEOutput(output=served.output, router_logits=served.logits, load_balance_loss=nan, z_loss=nan,
                         stats=routing_stats(probs, tokens_per_expert), expert_indices=served.indices)

    def forget_plan(self) -> None:
        """Drop what a served forward derives from the current tensors and modules (the frozen projections'
        row kernels, the factor layouts); the next one derives it again. ``to()`` and the like call it (they
        may replace the tensors), and so does ``trainables.lm.quantize.quantize_base`` (it replaces the
        frozen projections)."""
        self._kernels = self._stacked = self._expert_rows_cache = self._chosen_views = None

    def _apply(self, *args: Any, **kwargs: Any) -> MixLoRAFFN:
        self.forget_plan()
        return super()._apply(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_kernels": None, "_chosen_views": None}  # a copy derives its own

    def _frozen_kernels(self) -> tuple[RowKernel | None, RowKernel | None]:
        """The frozen stacked ``gate_up_proj`` (None where it is not stacked) and ``down_proj`` as row kernels
        (``trainables.lm.fused.row_kernel``: no nn.Module call; a low-bit one returns bfloat16), made once
        (``forget_plan``); None where one is a wrapper, called as a module."""
        if self._kernels is None:
            gate_up = self._modules.get("gate_up_proj")
            self._kernels = (row_kernel(gate_up) if gate_up is not None else None, row_kernel(self.down_proj))
        return self._kernels

    def _cached_factors(self, slot: str, build: Callable[[], Any]) -> Any:
        """``build()``, a layout of the experts' LoRA factors, kept in the attribute ``slot`` and built again
        only when a factor changed (an in-place update bumps a tensor's ``_version``; ``to()`` moves its
        storage): served weights do not change, so a decode step pays no copies."""
        banks = self._modules  # not nn.Module's attribute lookup: this runs per layer per served forward
        key = tuple((t._version, t.data_ptr())
                    for name in ("lora_gate", "lora_up", "lora_down") for t in banks[name]._parameters.values())
        cached = getattr(self, slot)
        if cached is not None and cached[0] == key:
            return cached[1]
        with torch.no_grad():
            value = build()
        setattr(self, slot, (key, value))
        return value

    def _expert_rows(self) -> torch.Tensor:
        """Every expert's LoRA factors as one contiguous row, (E, D·2r + 2r·H + H·r + r·D): ``[A_gate | A_up]``
        (D, 2r), ``B_gate`` (r, H), ``B_up`` (r, H), ``A_down`` (H, r), ``B_down`` (r, D), the B factors
        scaled by alpha / r (``_cached_factors``)."""
        E = self.num_experts
        return self._cached_factors("_expert_rows_cache", lambda: torch.cat([
            torch.cat([self.lora_gate.A, self.lora_up.A], dim=-1).reshape(E, -1),  # (E, D·2r)
            (self.lora_gate.B * self.lora_gate.scaling).reshape(E, -1),  # (E, r·H)
            (self.lora_up.B * self.lora_up.scaling).reshape(E, -1),  # (E, r·H)
            self.lora_down.A.reshape(E, -1),  # (E, H·r)
            (self.lora_down.B * self.lora_down.scaling).reshape(E, -1),  # (E, r·D)
        ], dim=1))

    def _mix_one_token(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``_mix_experts_inference``'s mixture for one token and k <= 2, x (1, D), weights / indices (1, k)
        -> (1, D), reading only the chosen experts' factors.

        At one token the block's time is the bytes it reads: all E experts' float32 factors are 1.6 MB
        a SmolLM2 layer, 49 MB a decode step, more than the int4 base's weights; the k chosen ones are
        k / E of that (a quarter at E = 8, k = 2). Gathering them (``index_select``) cost as much as
        reading all of them, so each factor of the chosen experts is a strided view of ``_expert_rows``
        (the two experts in increasing order: one stride between them) that the batched matmuls read
        in place. The expert ids come to the host (``tolist``; cheap on the CPU, hence CPU only). Per
        chosen expert j: ``gate_j, up_j = frozen gate/up(x) + x A_j B_j``; ``a_j = act(gate_j) * up_j``;
        the output is ``down(Σ_j w_j a_j) + Σ_j w_j a_j A_down_j B_down_j`` (the frozen down once).
        """
        k, H = indices.shape[-1], self.lora_gate.B.shape[-1]
        (ids,), w = indices.tolist(), weights.reshape(k, 1, 1)  # the chosen experts, on the host; their weights
        if k == 2 and ids[0] > ids[1]:  # increasing, for one non-negative stride (the sum does not care)
            ids, w = ids[::-1], w.flip(0)
        a_gate_up, b_gate, b_up, a_down, b_down = self._chosen_factors(tuple(ids))
        gate_up, down = self._frozen_kernels()
        z = torch.matmul(x, a_gate_up)  # (k, 1, 2r): gate's r, up's r
        r = z.shape[-1] // 2
        if gate_up is not None:
            both = gate_up(x).to(x.dtype)  # (1, 2H)
            gate, up = both[:, :H], both[:, H:]
        else:
            gate, up = self._frozen_gate_up(x)  # (1, H) each
        a = self.act_fn(torch.baddbmm(gate, z[..., :r], b_gate))  # (k, 1, H): the frozen part broadcast to each
        a = a.mul_(torch.baddbmm(up, z[..., r:], b_up)).mul_(w)  # (k, 1, H), weighted
        frozen = down(a.sum(0)) if down is not None else self.down_proj(a.sum(0))  # (1, D); low-bit: bfloat16
        return frozen + torch.bmm(torch.bmm(a, a_down), b_down).sum(0)  # (1, D), in x's dtype

    def _chosen_factors(self, ids: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """The LoRA factors of experts ``ids`` (one, or two in increasing order) as strided views of
        ``_expert_rows``: ``[A_gate | A_up]`` (k, D, 2r), ``B_gate`` (k, r, H), ``B_up`` (k, r, H), ``A_down``
        (k, H, r), ``B_down`` (k, r, D). Made once per choice of experts and kept with the rows they view
        (at most E·E choices; a decode step then makes no views)."""
        rows = self._expert_rows()
        if self._chosen_views is None or self._chosen_views[0] is not rows:
            self._chosen_views = (rows, {})
        known = self._chosen_views[1]
        found = known.get(ids)
        if found is None:
            (_, d_model, rank), hidden = self.lora_gate.A.shape, self.lora_gate.B.shape[-1]
            width, k = rows.shape[1], len(ids)
            offset, stride = ids[0] * width, (ids[-1] - ids[0]) * width or width
            views = []  # each piece of the rows' layout, for the chosen experts: (k, *shape)
            for shape in ((d_model, 2 * rank), (rank, hidden), (rank, hidden), (hidden, rank), (rank, d_model)):
                views.append(rows.as_strided((k, *shape), (stride, shape[1], 1), offset))
                offset += shape[0] * shape[1]
            found = known[ids] = tuple(views)
        return found

    def _stacked_factors(self) -> StackedFactors:
        """The experts' LoRA factors as ``_mix_experts_inference`` multiplies them (``_cached_factors``)."""
        num_experts, d_model, rank = self.lora_gate.A.shape  # (E, D, r)
        hidden = self.lora_gate.B.shape[-1]
        a_stack = lambda bank: bank.A.transpose(0, 1).reshape(-1, num_experts * rank)  # (in, E·r), a copy
        return self._cached_factors("_stacked", lambda: StackedFactors(
            a_gate_up=torch.stack([a_stack(self.lora_gate), a_stack(self.lora_up)]),
            b_gate_up=torch.stack([self.lora_gate.B.reshape(num_experts * rank, hidden) * self.lora_gate.scaling,
                                   self.lora_up.B.reshape(num_experts * rank, hidden) * self.lora_up.scaling]),
            a_down=a_stack(self.lora_down),
            b_down=self.lora_down.B.reshape(num_experts * rank, d_model) * self.lora_down.scaling,
        ))

    def _mix_experts_inference(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``_mix_experts``'s mixture without a loop over experts, for eval mode (no dropout, no grad).

        x (T, D), weights/indices (T, k) -> (T, D). Every LoRA stage is one dense matmul over all E
        experts' stacked factors (``_stacked_factors``: E·r wide, 64 for E = r = 8; gate and up side
        by side), with the unchosen experts' rank-r slices zeroed by a (T, k, E) one-hot mask, so the
        experts cost a few kernels per layer whatever T and E are: one matmul through every A of gate
        and up, one batched matmul through the chosen B of both, the frozen gate and up once per
        token. The frozen down projection is linear, so it runs once per token on the weighted
        mixture of the k activations: Σ_j w_j down(a_j) = down(Σ_j w_j a_j).
        """
        num_tokens, top_k = indices.shape
        if num_tokens == 0:
            return torch.zeros_like(x)
        f = self._stacked_factors()
        num_experts, rank = self.num_experts, self.lora_gate.A.shape[-1]
        hidden = f.b_gate_up.shape[-1]
        onehot = x.new_zeros(num_tokens, top_k, num_experts, 1).scatter_(2, indices[..., None, None], 1.0)  # (T,k,E,1)

        # gate and up: frozen once per token, plus the chosen experts' deltas, per (token, slot)
        z = torch.matmul(x, f.a_gate_up).view(2, num_tokens, 1, num_experts, rank)  # (2, T, 1, E, r)
        z = (z * onehot).view(2, num_tokens * top_k, num_experts * rank)  # (2, T·k, E·r), one expert per slot
        delta = torch.bmm(z, f.b_gate_up).view(2, num_tokens, top_k, hidden)  # (2, T, k, H), scaled
        gate, up = self._frozen_gate_up(x)  # (T, H) each
        g = delta[0].add_(gate.unsqueeze(1))  # (T, k, H)
        u = delta[1].add_(up.unsqueeze(1))  # (T, k, H)
        a = self.act_fn(g).mul_(u)  # (T, k, H)

        # down: the frozen projection once, on Σ_j w_j a_j; each expert's down LoRA on its own a_j
        mixed = torch.bmm(weights.unsqueeze(1), a).squeeze(1)  # (T, 1, k) @ (T, k, H) -> (T, H)
        z_down = (a.view(num_tokens * top_k, hidden) @ f.a_down).view(num_tokens, top_k, num_experts, rank)
        z_down = (z_down * (onehot * weights[..., None, None])).sum(1).view(num_tokens, -1)  # (T, E·r)
        return torch.addmm(self.down_proj(mixed), z_down, f.b_down)

    def _mix_experts(
        self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``Σ_j weights[t, j] · expert_{indices[t, j]}(x[t])``: x (T, D), weights/indices (T, k).

        Returns the (T, D) mixture and the (E,) number of assignments per expert.
        """
        num_tokens, top_k = indices.shape
        if num_tokens == 0:
            return torch.zeros_like(x), torch.zeros(self.num_experts, dtype=torch.long, device=x.device)
        flat = indices.reshape(-1)  # (N,), N = T·k assignments
        order = torch.argsort(flat, stable=True)  # (N,) assignments grouped by expert
        tokens_per_expert = torch.bincount(flat, minlength=self.num_experts)  # (E,)
        counts = tokens_per_expert.tolist()
        token_ids = order // top_k  # (N,) the token of each sorted assignment
        sorted_weights = weights.reshape(-1)[order]  # (N,)

        # frozen gate and up: once per token, for all experts
        gate, up = self._frozen_gate_up(x)  # (T, H) each
        # the LoRA input: one dropout mask per token, shared by the gate and up LoRA of its k experts
        # (as one dropout before a fused [A_gate | A_up]); T·D random draws instead of 2·T·k·D
        lora_in = self.lora_dropout(x).index_select(0, token_ids).split(counts)  # E chunks of (n_e, D)
        gate_rows = gate.index_select(0, token_ids).split(counts)  # E chunks of (n_e, H)
        up_rows = up.index_select(0, token_ids).split(counts)  # E chunks of (n_e, H)

        # per expert, on its rows: LoRA deltas, activation, frozen down + its LoRA
        drop = self.lora_dropout
        outs = []
        for e, n in enumerate(counts):
            if n == 0:
                continue
            g = self.lora_gate(lora_in[e], e, base=gate_rows[e])  # (n_e, H)
            u = self.lora_up(lora_in[e], e, base=up_rows[e])  # (n_e, H)
            a = self.act_fn(g) * u  # (n_e, H)
            outs.append(self.lora_down(drop(a), e, base=self.down_proj(a)))  # (n_e, D)
        y = torch.cat(outs) * sorted_weights.unsqueeze(-1)  # (N, D)
        out = x.new_zeros(num_tokens, x.shape[-1]).index_add_(0, token_ids, y)  # (T, D)
        return out, tokens_per_expert


def _is_silu(act_fn: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``act_fn`` is SiLU (``F.silu``, ``nn.SiLU``, or Hugging Face's ``SiLUActivation``, which a Llama
    MLP holds): the one activation our one-token kernel computes."""
    return act_fn is F.silu or type(act_fn) in (nn.SiLU, SiLUActivation)


class _Served(NamedTuple):
    """A served forward's output and routing, before ``MixLoRAFFN._served_output`` builds its ``MoEOutput``
    (only when something reads it: ``MixLoRAMLP.last``)."""

    output: torch.Tensor  # (..., D), the input's shape
    logits: torch.Tensor  # (T, E) the router's logits
    weights: torch.Tensor  # (T, k) the chosen experts' weights, renormalised
    indices: torch.Tensor  # (T, k) the chosen experts


class MixLoRAMLP(MixLoRAFFN):
    """``MixLoRAFFN`` as a drop-in for a decoder layer's ``mlp``: ``forward`` returns the
    output tensor (what the decoder layer adds to its residual) and keeps the full
    ``MoEOutput`` of the latest call in ``self.last`` for ``surgery.router_outputs``.

    ``pop_expert_choices`` is the routing hook of ``trainables.lm.engine``: with it, the
    engine's ``moe`` for a MixLoRA model summarises, per layer, the experts that carried each
    generated token (``{"tokens": n, "top_k": k, "layers": [{"layer": l, "experts": {"3": count,
    ...}}, ...], "per_token": [[[e, e] per layer] per token]}``; see the engine's docstring).

    The frozen projections keep their names, so the base weights sit at the same state
    dict keys as in the base model (``...mlp.gate_proj.weight``)."""

    # the latest forward: its MoEOutput, or, served, its output and routing until ``last`` is read, so a
    # decode step computes no routing stats that nobody reads (the engine reads only the expert ids)
    _latest: MoEOutput | _Served | None = None

    @property
    def last(self) -> MoEOutput | None:
        """The full ``MoEOutput`` of the latest forward (None if none since it was cleared)."""
        latest = self._latest
        if isinstance(latest, _Served):
            latest = self._served_output(latest)
            self._latest = latest
        return latest

    @last.setter
    def last(self, value: MoEOutput | None) -> None:
        self._latest = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``x``: (B, T, D) -> (B, T, D). Safe to call from several threads at once (a server calling
        ``generate`` per request): each call returns its own output; ``last`` is then whichever
        finished last, which only the single-threaded training loop and engine read."""
        if not self.serving():
            out = super().forward(x)
            self._latest = out
            return out.output
        served = self._serve(x.reshape(-1, x.shape[-1]), x.shape)
        self._latest = served  # one assignment: a reader sees one call's record whole
        return served.output

    def pop_expert_choices(self) -> torch.Tensor | None:
        """The top-k expert ids of each token of the latest forward, (B, T, k) for an input
        (B, T, D), highest router weight first; None if there was no forward since the last
        call (it forgets ``last``, as ``surgery.router_outputs`` does, so nothing stale is read twice)."""
        latest, self._latest = self._latest, None
        if latest is None:
            return None
        indices = latest.indices if isinstance(latest, _Served) else latest.expert_indices  # (T, k)
        return indices.reshape(*latest.output.shape[:-1], -1)  # (B, T, k)
