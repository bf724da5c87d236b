"""Forward+backward time of one MixLoRA FFN block against its naive form, plain LoRA and
the frozen FFN, at SmolLM2-135M's shape.

    python benchmarks/mixlora_layer.py --json mixlora_layer.json

Implementations, all on a LlamaMLP of d_model 576 and FFN width 1536 (SmolLM2-135M),
2048 tokens, in training mode (LoRA dropout on), the input requiring grad as it does
inside a model whose attention is trained too:
  mixlora        trainables.mixlora.MixLoRAFFN, E = 8, k = 2, r = 8: shared frozen gate/up
                 once per token, per-expert LoRA deltas, frozen down once over T·k rows
  mixlora_naive  MixLoRANaive (benchmarks/reference_mixlora.py): the same block, each expert running the
                 whole frozen FFN plus its LoRA on its routed rows
  lora           peft LoRA (r = 8) on gate_proj, up_proj and down_proj of the LlamaMLP
  base           the frozen LlamaMLP, no adapters
Before timing, mixlora and mixlora_naive are checked equal (outputs and gradients, in
eval mode so that dropout is off). Implementations alternate within each repeat so that
machine noise hits all of them alike; the figure reported is the median over repeats.

FLOPs are counted analytically (2 per multiply-add, matmuls only), forward + backward,
with the frozen weights getting no weight gradient:
  base           12·T·D·H
  lora           12·T·D·H + 18·T·r·(D + H)                      (3 projections, in + out = D + H)
  mixlora        8·T·D·H + 4·N·D·H + 18·N·r·(D + H) + 6·T·D·E    (N = T·k assignments)
  mixlora_naive  12·N·D·H + 18·N·r·(D + H) + 6·T·D·E
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from peft import LoraConfig, inject_adapter_in_model
from reference_mixlora import MixLoRANaive  # benchmarks/reference_mixlora.py, beside this script
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from trainables.mixlora import MixLoRAFFN, MixLoRALayerConfig

D_MODEL, HIDDEN = 576, 1536  # SmolLM2-135M
IMPLS = ("mixlora", "mixlora_naive", "lora", "base")


def flops(impl: str, tokens: int, cfg: MixLoRALayerConfig, d: int = D_MODEL, h: int = HIDDEN) -> int:
    """Forward + backward matmul FLOPs of one call (see the module docstring)."""
    t, n, r = tokens, tokens * cfg.top_k, cfg.rank
    lora_per_row = 18 * r * (d + h)  # 3 projections x (fwd + grad input + grad weight) x 2 matmuls
    router = 6 * t * d * cfg.num_experts
    return {
        "base": 12 * t * d * h,
        "lora": 12 * t * d * h + t * lora_per_row,
        "mixlora": 8 * t * d * h + 4 * n * d * h + n * lora_per_row + router,
        "mixlora_naive": 12 * n * d * h + n * lora_per_row + router,
    }[impl]


def build(cfg: MixLoRALayerConfig, seed: int) -> dict[str, nn.Module]:
    """The four blocks, sharing one set of frozen FFN weights (copied, never tied)."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=D_MODEL, intermediate_size=HIDDEN, hidden_act="silu", mlp_bias=False)
    base = LlamaMLP(config).requires_grad_(False)
    ours = MixLoRAFFN.from_mlp(copy.deepcopy(base), cfg)
    with torch.no_grad():  # non-zero B, so that every LoRA path carries signal
        for bank in (ours.lora_gate, ours.lora_up, ours.lora_down):
            bank.B.normal_(std=0.02)
    naive = MixLoRANaive.from_mlp(copy.deepcopy(base), cfg)
    naive.load_state_dict(ours.state_dict())
    lora = inject_adapter_in_model(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=["gate_proj", "up_proj", "down_proj"],
        ),
        copy.deepcopy(base),
    )
    return {"mixlora": ours, "mixlora_naive": naive, "lora": lora, "base": base}


def check_equal(ours: nn.Module, naive: nn.Module, x: torch.Tensor) -> None:
    """Outputs and every gradient of mixlora == mixlora_naive (dropout off)."""
    results = []
    for module in (ours, naive):
        module.eval().zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        out = module(xi).output
        out.square().mean().backward()
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        results.append((out.detach(), xi.grad, grads))
        module.train()
    (o1, gx1, g1), (o2, gx2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-4, atol=1e-5, msg="mixlora output != naive")
    torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=1e-6, msg="mixlora input grad != naive")
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg="mixlora parameter grad != naive")


def forward_backward(module: nn.Module, x: torch.Tensor) -> None:
    out = module(x)
    if not isinstance(out, torch.Tensor):
        out = out.output
    out.square().mean().backward()


def time_once(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def run(tokens: int, cfg: MixLoRALayerConfig, repeats: int, warmup: int, seed: int) -> list[dict]:
    impls = build(cfg, seed)
    x = torch.randn(1, tokens, D_MODEL, generator=torch.Generator().manual_seed(seed + 1))
    check_equal(impls["mixlora"], impls["mixlora_naive"], x)
    for module in impls.values():
        module.train()
    times: dict[str, list[float]] = {name: [] for name in impls}
    for i in range(warmup + repeats):
        for name, module in impls.items():
            module.zero_grad(set_to_none=True)
            xi = x.clone().requires_grad_(True)
            ms = time_once(lambda m=module, xi=xi: forward_backward(m, xi))
            if i >= warmup:
                times[name].append(ms)
    return [{"impl": name, "tokens": tokens, "ms": round(statistics.median(times[name]), 3)} for name in IMPLS]


def print_table(records: list[dict], cfg: MixLoRALayerConfig) -> None:
    ms = {r["impl"]: r["ms"] for r in records}
    tokens = records[0]["tokens"]
    fl = {name: flops(name, tokens, cfg) for name in ms}
    print(
        f"{'impl':<14}{'ms':>9}{'x lora':>9}{'x naive':>9}{'GFLOP':>9}{'ideal x lora':>14}{'ideal x naive':>15}"
        f"{'GFLOP/s':>9}"
    )
    for name in ms:
        print(
            f"{name:<14}{ms[name]:>9.1f}{ms[name] / ms['lora']:>9.2f}{ms[name] / ms['mixlora_naive']:>9.2f}"
            f"{fl[name] / 1e9:>9.2f}{fl[name] / fl['lora']:>14.2f}{fl[name] / fl['mixlora_naive']:>15.2f}"
            f"{fl[name] / ms[name] / 1e6:>9.1f}"
        )
    print(
        f"mixlora: {ms['mixlora_naive'] / ms['mixlora']:.2f}x faster than mixlora_naive (target >= 1.2, "
        f"FLOP-ideal {fl['mixlora_naive'] / fl['mixlora']:.2f}); {ms['mixlora'] / ms['lora']:.2f}x lora "
        f"(target <= 1.7, FLOP-ideal {fl['mixlora'] / fl['lora']:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="write the records here")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = MixLoRALayerConfig(
        num_experts=args.experts, top_k=args.top_k, rank=args.rank, alpha=2.0 * args.rank, dropout=args.dropout
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; D={D_MODEL} H={HIDDEN} "
        f"E={cfg.num_experts} k={cfg.top_k} r={cfg.rank} dropout={cfg.dropout}, {args.tokens} tokens, "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    records = run(args.tokens, cfg, args.repeats, args.warmup, args.seed)
    print_table(records, cfg)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
