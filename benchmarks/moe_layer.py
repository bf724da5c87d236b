"""Forward+backward time of moe-orch's MoE layer against a dense FFN and HF Mixtral.

    python benchmarks/moe_layer.py --json moe_layer.json

Implementations, all at d_model 256, expert width 512, 8 experts, top-2:
  moe_orch       trainables.moe.MoELayer (dropless, sort-based dispatch)
  dense_active   a dense SwiGLU FFN of width 512 x 2 = 1024: the same active parameters
  hf_eager       transformers' MixtralSparseMoeBlock, experts_implementation="eager"
  hf_grouped_mm  the same block with experts_implementation="grouped_mm"
The HF blocks get our weights copied in, and their outputs are checked equal to ours
before any timing. Implementations alternate within each repeat so that machine noise
hits all of them alike; the reported figure is the median over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from trainables.moe import MoELayer

D_MODEL, EXPERT_HIDDEN, NUM_EXPERTS, TOP_K = 256, 512, 8, 2


class DenseSwiGLU(nn.Module):
    """The standard three-projection SwiGLU FFN (as in Llama/Mixtral)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(nn.functional.silu(self.w_gate(x)) * self.w_up(x))


def build_hf_block(ours: MoELayer, implementation: str) -> nn.Module:
    """A MixtralSparseMoeBlock with the same shapes and our weights copied in."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(
        hidden_size=D_MODEL,
        intermediate_size=EXPERT_HIDDEN,
        num_local_experts=NUM_EXPERTS,
        num_experts_per_tok=TOP_K,
        hidden_act="silu",
        router_jitter_noise=0.0,
    )
    config._experts_implementation = implementation
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.gate.weight)  # (E, D)
        block.experts.gate_up_proj.copy_(ours.experts.w_in.transpose(1, 2))  # (E, 2H, D)
        block.experts.down_proj.copy_(ours.experts.w_out.transpose(1, 2))  # (E, D, H)
    return block


def forward_backward(module: nn.Module, x: torch.Tensor, moe: bool) -> None:
    out = module(x)
    if moe and isinstance(module, MoELayer):
        out = out.output
    out.float().square().mean().backward()


def time_once(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def run(token_counts: list[int], repeats: int, warmup: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    ours = MoELayer(D_MODEL, NUM_EXPERTS, TOP_K, EXPERT_HIDDEN, activation="swiglu")
    dense = DenseSwiGLU(D_MODEL, EXPERT_HIDDEN * TOP_K)
    impls: dict[str, nn.Module] = {"moe_orch": ours, "dense_active": dense}
    for implementation in ("eager", "grouped_mm"):
        impls[f"hf_{implementation}"] = build_hf_block(ours, implementation)

    records = []
    for tokens in token_counts:
        x = torch.randn(1, tokens, D_MODEL, generator=torch.Generator().manual_seed(seed + tokens))
        with torch.no_grad():
            expected = ours(x).output
            for name, module in impls.items():
                if name.startswith("hf_"):
                    torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-5, msg=f"{name} differs")
        times: dict[str, list[float]] = {name: [] for name in impls}
        for i in range(warmup + repeats):
            for name, module in impls.items():
                module.zero_grad(set_to_none=True)
                xi = x.clone().requires_grad_(True)
                ms = time_once(lambda m=module, xi=xi: forward_backward(m, xi, moe=True))
                if i >= warmup:
                    times[name].append(ms)
        for name, samples in times.items():
            records.append({"impl": name, "tokens": tokens, "ms": round(statistics.median(samples), 3)})
        print(f"  {tokens} tokens done", flush=True)
    return records


def print_table(records: list[dict]) -> None:
    token_counts = sorted({r["tokens"] for r in records})
    names = list(dict.fromkeys(r["impl"] for r in records))
    by_key = {(r["impl"], r["tokens"]): r["ms"] for r in records}
    header = f"{'impl':<14}" + "".join(f"{t:>10} tok" for t in token_counts) + "   (ms, x dense_active)"
    print(header)
    for name in names:
        cells = []
        for t in token_counts:
            ms, ref = by_key[(name, t)], by_key[("dense_active", t)]
            cells.append(f"{ms:>8.1f} {ms / ref:>4.2f}x")
        print(f"{name:<14}" + "".join(f"{c:>14}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="PATH", help="write the records here")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"D={D_MODEL} H={EXPERT_HIDDEN} E={NUM_EXPERTS} k={TOP_K}"
    )
    records = run(args.tokens, args.repeats, args.warmup, args.seed)
    print_table(records)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
