"""The Ensemble MoE: a learned gate mixes the class probabilities of several HF classifiers.

For an input text x with experts e = 1..E (each with its own tokenizer)::

    g(x)   = gate_weights(Gate(x))            (E,)   softmax, or top-k softmax (zeros elsewhere)
    p_e    = softmax(expert_e(tokenize_e(x)))  (C,)
    p(y|x) = sum_e g_e(x) * p_e(y|x)                  the gate-weighted mixture of probabilities

computed in log space as ``logsumexp_e(log g_e + log p_e)``. The training objective is the
mixture's negative log-likelihood; ``EnsembleOutput`` also carries the unweighted auxiliary
losses (mean per-expert cross-entropy, Switch load balance against gate collapse) for the
loop to weight. With top-k gating an expert only runs on the inputs routed to it, unless
``all_experts=True`` (evaluation: every expert's own accuracy is measured).

``expert_training``: ``all`` fine-tunes experts and gate; ``heads`` trains the gate and each
expert's classifier head (encoders frozen); ``frozen`` trains the gate only (experts are
kept in eval mode, so dropout is off and their outputs are fixed).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainables.ensemble.config import EnsembleConfig
from trainables.ensemble.experts import build_expert, head_parameters, trainable_parameters
from trainables.ensemble.gate import HashedNgramGate, balance_loss, gate_weights


class EnsembleOutput(NamedTuple):
    """What ``EnsembleMoE.forward`` returns (B inputs, E experts, C classes)."""

    log_probs: torch.Tensor  # (B, C) log of the mixture p(y|x)
    gate_weights: torch.Tensor  # (B, E) mixture weights (top-k: zeros off the top k); rows sum to 1
    gate_probs: torch.Tensor  # (B, E) dense softmax of the gate logits
    expert_log_probs: torch.Tensor  # (B, E, C) each expert's log-probabilities (0 where not computed)
    expert_mask: torch.Tensor  # (B, E) bool: expert e ran on input b
    nll: torch.Tensor  # () mixture negative log-likelihood (0 without labels)
    expert_loss: torch.Tensor  # () mean over experts of their cross-entropy on the inputs they ran on
    balance_loss: torch.Tensor  # () Switch load-balance loss, 1.0 when balanced

    @property
    def probs(self) -> torch.Tensor:
        """(B, C) mixture probabilities."""
        return self.log_probs.exp()


class EnsembleMoE(nn.Module):
    """Gate + experts; see the module docstring. Build with ``EnsembleMoE.build`` or ``load_checkpoint``."""

    def __init__(self, cfg: EnsembleConfig, experts: list[PreTrainedModel],
                 tokenizers: list[PreTrainedTokenizerBase]) -> None:
        super().__init__()
        self.cfg = cfg
        self.experts = nn.ModuleList(experts)
        self.tokenizers = list(tokenizers)  # plain objects, not modules
        self.gate = HashedNgramGate(len(experts), cfg.gate_buckets, cfg.gate_ngrams, cfg.gate_embed_dim,
                                    cfg.gate_hidden, cfg.gate_dropout)
        self.apply_expert_training()

    @classmethod
    def build(cls, cfg: EnsembleConfig, texts: list[str] | None = None) -> EnsembleMoE:
        """Load/build every expert of ``cfg`` (``texts`` train the from-config experts' tokenizers)."""
        built = [build_expert(spec, cfg.num_labels, texts) for spec in cfg.validate().experts]
        return cls(cfg, [m for m, _ in built], [t for _, t in built])

    @property
    def expert_names(self) -> list[str]:
        return self.cfg.expert_names

    def apply_expert_training(self) -> None:
        """Set ``requires_grad`` per ``cfg.expert_training`` and each spec's ``train_layers``.

        The gate always trains."""
        mode = self.cfg.expert_training
        for expert, spec in zip(self.experts, self.cfg.experts, strict=True):
            if mode == "all":
                trainable = trainable_parameters(expert, spec.get("train_layers"))
            else:
                trainable = head_parameters(expert) if mode == "heads" else []
            ids = {id(p) for p in trainable}
            for p in expert.parameters():
                p.requires_grad_(id(p) in ids)

    def train(self, mode: bool = True) -> EnsembleMoE:
        """Like ``nn.Module.train``, but frozen experts stay in eval mode."""
        super().train(mode)
        if self.cfg.expert_training == "frozen":
            self.experts.eval()
        return self

    def expert_logits(self, index: int, texts: list[str]) -> torch.Tensor:
        """Expert ``index``'s class logits (n, C) for ``texts``, tokenised by its own tokenizer."""
        tokenizer = self.tokenizers[index]
        enc = tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        device = next(self.experts[index].parameters()).device
        inputs = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return self.experts[index](**inputs).logits

    def forward(self, texts: list[str], labels: torch.Tensor | None = None,
                all_experts: bool = False) -> EnsembleOutput:
        """Mix the experts' probabilities for B ``texts``; ``labels`` (B,) give the losses.

        ``all_experts``: run every expert on every input even under top-k gating (the mixture
        is the same; ``expert_log_probs`` is then complete).
        """
        batch, num_experts, num_classes = len(texts), len(self.experts), self.cfg.num_labels
        logits = self.gate(texts)  # (B, E)
        gate_probs = torch.softmax(logits, dim=-1)
        weights, log_w = gate_weights(logits, self.cfg.top_k)  # (B, E) each
        expert_logp = logits.new_zeros(batch, num_experts, num_classes)  # (B, E, C)
        mask = torch.zeros(batch, num_experts, dtype=torch.bool, device=logits.device)
        expert_losses = []
        for e in range(num_experts):
            rows = torch.arange(batch, device=logits.device) if all_experts else (weights[:, e] > 0).nonzero()[:, 0]
            if len(rows) == 0:
                continue
            logp = torch.log_softmax(self.expert_logits(e, [texts[i] for i in rows.tolist()]).float(), dim=-1)
            expert_logp = expert_logp.index_put((rows, torch.full_like(rows, e)), logp)  # (n, C) into (B, E, C)
            mask[rows, e] = True
            if labels is not None:
                expert_losses.append(nn.functional.nll_loss(logp, labels[rows].to(logp.device)))
        # log p(y|x) = logsumexp_e(log g_e + log p_e); -inf weights drop unselected experts
        log_probs = torch.logsumexp(log_w.unsqueeze(-1) + expert_logp, dim=1)  # (B, C)
        zero = logits.new_zeros(())
        nll = nn.functional.nll_loss(log_probs, labels.to(log_probs.device)) if labels is not None else zero
        expert_loss = torch.stack(expert_losses).mean() if expert_losses else zero
        return EnsembleOutput(log_probs, weights, gate_probs, expert_logp, mask, nll, expert_loss,
                              balance_loss(gate_probs, weights, self.cfg.top_k))

    @torch.no_grad()
    def predict(self, texts: list[str], chunk_size: int = 8) -> dict[str, Any]:
        """Inference for serving: labels (B,), probabilities (B, C) and gate weights (B, E) as lists.

        Texts are sorted by length and run in chunks of ``chunk_size``, so a large batch of
        mixed lengths is not padded to its longest text (results come back in input order).
        """
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        probs, weights = [], []
        for start in range(0, len(order), chunk_size):
            out = self([texts[i] for i in order[start:start + chunk_size]])
            probs.append(out.probs)
            weights.append(out.gate_weights)
        self.train(was_training)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        p, w = torch.cat(probs)[inverse], torch.cat(weights)[inverse]  # (B, C), (B, E) in input order
        return {"labels": p.argmax(-1).tolist(), "probabilities": p.tolist(), "gate_weights": w.tolist()}
