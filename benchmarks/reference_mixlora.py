"""MixLoRA's reference implementation, for the tests and the benchmark only: ``MixLoRANaive``.

The same parameters and router as ``trainables.mixlora.block.MixLoRAFFN``, but every expert runs the
whole frozen FFN (3 projections) plus its LoRA on its routed rows, through the generic
``trainables.moe.dispatch``: the textbook form the optimised block is checked against
(``tests/trainables/mixlora/test_mixlora_layer.py``) and timed against (``benchmarks/mixlora_layer.py``).
Imported as ``reference_mixlora`` (``benchmarks/`` is on the tests' ``pythonpath``, and a benchmark
script's own folder is on its ``sys.path``).
"""

from __future__ import annotations

import torch

from trainables.mixlora.block import MixLoRAFFN
from trainables.moe.dispatch import dispatch


class _NaiveExperts:
    """The callable ``trainables.moe.dispatch`` expects: each expert runs the whole
    frozen FFN plus its own LoRA on its contiguous rows."""

    def __init__(self, block: MixLoRAFFN) -> None:
        self.block = block
        self.num_experts = block.num_experts

    def __call__(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """x: (N, D) rows grouped by expert (``counts[e]`` rows each) -> (N, D)."""
        b, outs = self.block, []
        for e, rows in enumerate(x.split(counts)):
            if rows.shape[0] == 0:
                continue
            g = b.gate_proj(rows) + b.lora_gate(b.lora_dropout(rows), e)  # (n_e, H)
            u = b.up_proj(rows) + b.lora_up(b.lora_dropout(rows), e)  # (n_e, H)
            a = b.act_fn(g) * u  # (n_e, H)
            outs.append(b.down_proj(a) + b.lora_down(b.lora_dropout(a), e))  # (n_e, D)
        return torch.cat(outs)  # (N, D)


class MixLoRANaive(MixLoRAFFN):
    """Reference MixLoRA: the same parameters and router as ``MixLoRAFFN``, but every
    expert runs the whole frozen FFN (3 projections) on its routed rows, through the
    generic ``trainables.moe.dispatch`` (module docstring)."""

    fast_inference = False  # always the reference path, in eval mode too

    def _mix_experts(
        self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        result = dispatch(x, weights, indices, _NaiveExperts(self))  # type: ignore[arg-type]
        return result.output, result.tokens_per_expert
