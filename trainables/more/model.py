"""MoRE: a decoder-only MoE language model with recurrent experts, in one file.

Every block is pre-norm: ``h = h + Attn(RMSNorm(h)); h = h + MoE(RMSNorm(h))`` with
causal self-attention (rotary or learned positions) and a top-k MoE FFN from
``trainables.moe``. The model has ``L = n_layer`` distinct blocks ``B_1 .. B_L``; the
variant decides how often each one runs. ``R = num_recurrences``, ``e`` = token (+
learned position) embeddings, ``Stack(h) = B_L(...B_1(h))``.

``base``: a standard MoE transformer. ``h = Stack(e)``. R is ignored.

``more_a`` (fully recurrent): the whole stack is one recurrent cell, applied R times
  with the same weights: ``h_0 = e``, ``h_r = Stack(h_{r-1})``, output ``h_R``.
  Parameters equal base's; compute is R times base's.

``more_b`` (sandwiched recurrent): ``B_1`` is a prelude and ``B_L`` a coda, each run
  once; the middle blocks ``B_2 .. B_{L-1}`` form a recurrent core run R times:
  ``h = B_L(Core^R(B_1(e)))``. Needs L >= 3. Parameters equal base's; compute is
  ``2 + (L - 2)·R`` block applications.

``more_c`` (parallel branches): R branches run the same shared stack side by side on
  differently tagged copies of the input, ``h_r = Stack(e + b_r)``, where ``b_r`` is a
  learned branch embedding (R x D parameters; without it the branches would be
  identical). They are combined per token by a learned softmax gate,
  ``alpha_r = softmax_r(w · RMSNorm(h_r))``, ``h = sum_r alpha_r h_r`` (w and the
  norm: D parameters each). Parameters: base + (R + 2)·D; compute R times base's.

``more_d`` (sequential refinement): the shared stack runs R times; each pass re-reads
  the input and refines the previous pass's answer through a learned feedback
  projection F (D x D, plus an RMSNorm): ``h_1 = Stack(e)``,
  ``h_r = Stack(e + F(RMSNorm(h_{r-1})))``. Every pass is decoded by the shared LM head
  and supervised (deep supervision): the training loss averages the LM loss of all
  R passes, while ``logits`` and ``lm_loss`` are those of the last pass. Parameters:
  base + D² + D; compute R times base's.

Aux losses are averaged over every MoE layer call (so their scale does not depend on
depth or R) and added with the config's coefficients. Routing stats come back per
(layer, step); ``step`` is the recurrence step, or the branch for more_c, and is 0
for base and for the prelude/coda of more_b.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainables.moe import MoELayer, MoEOutput, RoutingStats
from trainables.more.config import MoREConfig


class LayerRouting(NamedTuple):
    """Routing of one MoE layer call: which block, at which recurrence step/branch."""

    layer: int
    step: int
    stats: RoutingStats
    expert_indices: torch.Tensor  # (B*T, k)


class MoREOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None  # training objective: LM loss(es) + weighted aux losses
    lm_loss: torch.Tensor | None  # cross-entropy of `logits` against the targets
    load_balance_loss: torch.Tensor  # () mean over MoE calls, unweighted
    z_loss: torch.Tensor  # () mean over MoE calls, unweighted
    routing: list[LayerRouting]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope_tables(head_dim: int, max_len: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables of shape (max_len, head_dim) for rotate-half RoPE."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))  # (hd/2,)
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)  # (max_len, hd/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, hd)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, hd); cos/sin: (T, hd)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: MoREConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=-1)  # (B, T, D) each
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    """Pre-norm transformer block: causal attention, then an MoE FFN."""

    def __init__(self, cfg: MoREConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.moe_norm = RMSNorm(cfg.d_model)
        self.moe = MoELayer(
            cfg.d_model,
            cfg.num_experts,
            cfg.top_k,
            cfg.expert_hidden,
            activation=cfg.activation,
            shared_expert_hidden=cfg.shared_expert_hidden,
            capacity_factor=cfg.capacity_factor,
            renormalize=cfg.renormalize,
            router_jitter=cfg.router_jitter,
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, MoEOutput]:
        h = h + self.drop(self.attn(self.attn_norm(h), rope))
        moe = self.moe(self.moe_norm(h))
        return h + self.drop(moe.output), moe


class MoRELM(nn.Module):
    """The MoRE language model; see the module docstring for the five variants."""

    def __init__(self, cfg: MoREConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        D, R = cfg.d_model, cfg.num_recurrences
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        self.pos_emb = nn.Embedding(cfg.block_size, D) if cfg.pos_encoding == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = RMSNorm(D)
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied
        if cfg.variant == "more_c":
            self.branch_emb = nn.Parameter(torch.randn(R, D) * 0.02)  # (R, D)
            self.branch_norm = RMSNorm(D)
            self.branch_score = nn.Linear(D, 1, bias=False)
        if cfg.variant == "more_d":
            self.feedback_norm = RMSNorm(D)
            self.feedback = nn.Linear(D, D, bias=False)
        if cfg.pos_encoding == "rope":
            cos, sin = rope_tables(D // cfg.n_head, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    # -- sizes -------------------------------------------------------------------------

    def num_parameters(self) -> int:
        """Unique parameters (shared and tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def num_active_parameters(self) -> int:
        """Parameters one token touches in one forward pass: all but the (E - k)
        unchosen experts of each MoE layer. Recurrence reuses the same weights, so it
        does not change this figure; see ``block_applications`` for compute."""
        return self.num_parameters() - sum(block.moe.inactive_parameters() for block in self.blocks)

    def block_applications(self) -> int:
        """How many block calls one forward pass makes (compute ~ this number)."""
        L, R = self.cfg.n_layer, self.cfg.num_recurrences
        return {"base": L, "more_b": 2 + (L - 2) * R}.get(self.cfg.variant, L * R)

    # -- forward -----------------------------------------------------------------------

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> MoREOutput:
        """idx: (B, T) token ids, T <= block_size; targets: (B, T) or None (-100 = ignore)."""
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        e = self.tok_emb(idx)  # (B, T, D)
        if self.pos_emb is not None:
            e = e + self.pos_emb(torch.arange(T, device=idx.device))
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.cfg.pos_encoding == "rope" else None

        calls: list[tuple[int, int, MoEOutput]] = []  # (layer, step, moe output)

        def run(h: torch.Tensor, layers: range, step: int) -> torch.Tensor:
            for i in layers:
                h, moe = self.blocks[i](h, rope)
                calls.append((i, step, moe))
            return h

        L, R, variant = self.cfg.n_layer, self.cfg.num_recurrences, self.cfg.variant
        everything = range(L)
        pass_outputs: list[torch.Tensor] = []  # more_d: every pass, for deep supervision
        if variant == "base":
            h = run(e, everything, 0)
        elif variant == "more_a":
            h = e
            for r in range(R):
                h = run(h, everything, r)
        elif variant == "more_b":
            h = run(e, range(0, 1), 0)
            for r in range(R):
                h = run(h, range(1, L - 1), r)
            h = run(h, range(L - 1, L), 0)
        elif variant == "more_c":
            branches = torch.stack([run(e + self.branch_emb[r], everything, r) for r in range(R)])  # (R, B, T, D)
            alpha = self.branch_score(self.branch_norm(branches)).softmax(dim=0)  # (R, B, T, 1)
            h = (alpha * branches).sum(dim=0)  # (B, T, D)
        else:  # more_d
            h = run(e, everything, 0)
            pass_outputs.append(h)
            for r in range(1, R):
                h = run(e + self.feedback(self.feedback_norm(h)), everything, r)
                pass_outputs.append(h)

        logits = self.lm_head(self.final_norm(h))  # (B, T, V)
        lb = torch.stack([c.load_balance_loss for _, _, c in calls]).mean()
        z = torch.stack([c.z_loss for _, _, c in calls]).mean()
        routing = [LayerRouting(layer, step, c.stats, c.expert_indices) for layer, step, c in calls]

        loss = lm_loss = None
        if targets is not None:
            lm_loss = self._cross_entropy(logits, targets)
            objective = lm_loss
            if variant == "more_d" and R > 1:
                earlier = [self._cross_entropy(self.lm_head(self.final_norm(p)), targets) for p in pass_outputs[:-1]]
                objective = torch.stack([*earlier, lm_loss]).mean()
            loss = objective + self.cfg.load_balance_coef * lb + self.cfg.z_loss_coef * z
        return MoREOutput(logits, loss, lm_loss, lb, z, routing)

    @staticmethod
    def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)

    # -- generation --------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens; returns (B, T + n).

        ``greedy`` (or temperature 0) takes the argmax; otherwise samples from
        softmax(logits / temperature), restricted to the ``top_k`` most likely tokens
        when given. Stops early once every row has produced ``eos_id``.
        """
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.block_size :]
            logits = self(context).logits[:, -1, :]  # (B, V)
            if greedy or temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                next_id = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)
            if eos_id is not None:
                finished |= next_id.squeeze(1) == eos_id
                if bool(finished.all()):
                    break
        return idx
