"""Decode speed: the bare base, LoRA and MixLoRA through our ``GenerationEngine``, and llama.cpp at batch 1.

    python benchmarks/decode.py --json PATH [--models base,lora,mixlora,llama_cpp] [--weights fp32]
                                [--batch 1,16] [--tokens 64] [--repeats 3] [--threads 2]
                                [--base smollm2-135m-instruct] [--unmerged] [--profile DIR] [--quick]
                                [--device cpu|cuda] [--compile]

Models, each on the same base (``--base``, SmolLM2-135M-Instruct by default, weights dequantised to
float32 by ``trainables.lm.base.load_base``):

- ``base``: the bare base;
- ``lora``: the MixLoRA family's plain-LoRA baseline (peft LoRA on all seven projections, rank matched
  to MixLoRA's trainable parameters: 43 on SmolLM2);
- ``mixlora``: 8 LoRA experts top-2 routed per token in every FFN, plus LoRA on attention;
- ``llama_cpp``: llama-cpp-python on the GGUF file the base is converted from (4-bit Q4_1 kernels,
  the bare base, one sequence), batch 1 only; skipped with a message where it is not installed
  (``CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python``).

The adapters are freshly initialised (seeded) with every LoRA B drawn from N(0, 0.02²) (a fresh B is
zero, which would make them no-ops); speed does not depend on trained values. They are prepared as
serving, ``generate`` and ``evaluate`` load a checkpoint (``load_adapter(..., inference=True)``: LoRA
merged into the frozen weights, ``trainables.mixlora.checkpoint.prepare_for_inference``), or, with
``--unmerged``, left as training keeps them.

Each record: ``batch`` sequences (distinct short prompts, left-padded) submitted at once, greedy,
exactly ``--tokens`` tokens each (EOS is ignored: the benchmark empties the engine's EOS set), the
median over ``--repeats`` after one warm-up run. ``ms_per_token``: the decode step's time: the wall
time of the run less that of a 1-token run of the same batch (prefill and first token), over the
``tokens - 1`` decode steps; ``tokens_per_s``: ``batch / ms_per_token``; ``wall_s``: the whole run.
``--weights``: ``fp32``, and/or ``int8``: the same model with the frozen base's linear layers as 8-bit
weights after the LoRA merge (``trainables.lm.quantize``, as ``serve.weights: int8`` loads it; the
adapters stay float32); llama_cpp has its own GGUF weights and is measured under ``fp32`` only.

Output: JSON list of ``{model, weights, batch, tokens_per_s, ms_per_token, merged, tokens, repeats,
threads, base, wall_s, device, dtype, compiled}`` (or ``{model, weights, batch, skipped}``), and a table
on stdout with the LoRA / base and MixLoRA / base ratios of time per token. ``--profile DIR``: also a torch.profiler
table per (model, batch) of its decode steps run in the main thread as the engine's step runs them
(``profile_decode``; ``DIR/profile_<model>_<weights>_b<batch>.txt``, by self CPU time).
``--quick``: 8 tokens, one repeat, for a smoke run (``--base tiny-llama`` makes it take seconds).
``--device cuda``: the models built as on CPU (float32, LoRA merged), then moved as serving moves them
(``trainables.lm.base.to_device``: bfloat16 on the GPU); int8 is CPU-only and skipped there, as is
llama_cpp (a CPU baseline). Each record says its ``device``.
``--compile``: the model's forward through ``torch.compile(dynamic=True)`` (the engine calls it as it
would the model); the warm-up run pays the compilation, and a record says ``compiled``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _loadgen import REPO
from serve_lm import FALLBACK_PROMPTS as PROMPTS  # short instructions

sys.path.insert(0, str(REPO))  # the repository's packages, installed or not

import torch  # noqa: E402

MODELS = ("base", "lora", "mixlora", "llama_cpp")
WEIGHTS = ("fp32", "int8")


def log(message: str) -> None:
    """Progress, to stderr."""
    print(message, file=sys.stderr, flush=True)


def build_model(base: str, method: str, merged: bool, weights: str = "fp32", device: str = "cpu",
                compile: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the bare base, or the base with fresh non-zero LoRA / MixLoRA adapters;
    ``weights="int8"``: its frozen linear layers then as 8-bit weights; on ``device`` as serving puts it;
    ``compile``: its forward through ``torch.compile(dynamic=True)``."""
    from trainables.lm.base import load_base, to_device
    from trainables.lm.quantize import apply_weights
    from trainables.mixlora.checkpoint import apply_adapters
    from trainables.mixlora.config import MixLoRAConfig

    model, tokenizer = load_base(base)
    if method != "base":
        torch.manual_seed(0)
        apply_adapters(model, MixLoRAConfig(base=base, method=method, dropout=0.0))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and (".lora_B." in name or name.endswith(".B")):
                    param.normal_(0.0, 0.02)
        if merged:
            from trainables.mixlora.checkpoint import prepare_for_inference

            prepare_for_inference(model)
    model = to_device(apply_weights(model, weights), device).eval()
    return (torch.compile(model, dynamic=True) if compile else model), tokenizer


def prompt_ids(tokenizer: Any, batch: int) -> list[list[int]]:
    return [tokenizer(PROMPTS[i % len(PROMPTS)], add_special_tokens=False)["input_ids"] for i in range(batch)]


def engine_run(engine: Any, ids: list[list[int]], tokens: int) -> float:
    """One batch through the engine, every row ``tokens`` tokens: the wall time in s."""
    from trainables.lm.engine import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    streams = [engine.submit(row, params) for row in ids]
    done = [s.collect() for s in streams]
    wall = time.perf_counter() - start
    assert all(e.completion_tokens == tokens for e in done), [e.completion_tokens for e in done]
    return wall


def decode_ms(run: Any, tokens: int) -> tuple[float, float]:
    """``(ms per decode step, wall s)``: a ``tokens``-token run less a 1-token one (prefill and first
    token only), over the ``tokens - 1`` decode steps between them."""
    short, wall = run(1), run(tokens)
    return 1000 * (wall - short) / max(tokens - 1, 1), wall


def bench_engine(model: Any, tokenizer: Any, batch: int, args: argparse.Namespace,
                 profile: Path | None) -> tuple[float, float]:
    """Median decode ms per step and median wall s over ``args.repeats``, after a warm-up run."""
    from trainables.lm.engine import GenerationEngine

    engine = GenerationEngine(model, tokenizer, max_batch_size=batch)
    engine.eos = set()  # every row decodes exactly ``tokens`` tokens
    ids = prompt_ids(tokenizer, batch)
    try:
        run = lambda tokens: engine_run(engine, ids, tokens)
        run(min(args.tokens, 8))  # warm-up
        runs = [decode_ms(run, args.tokens) for _ in range(args.repeats)]
        if profile is not None:
            profile_decode(model, tokenizer, ids, args.tokens, profile)
    finally:
        engine.close()
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def profile_decode(model: Any, tokenizer: Any, ids: list[list[int]], tokens: int, path: Path) -> None:
    """torch.profiler over ``tokens`` greedy decode steps of the batch, run in this thread as the
    engine's step runs them (one forward over the last tokens with the cache, the mask grown by one,
    argmax, the MoE trace popped); the engine's own thread is invisible to the profiler. Self CPU
    time per op, to ``path``."""
    from trainables.lm.kv_cache import SlabCache

    width, device = max(len(r) for r in ids), next(model.parameters()).device
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)  # (B, T)
    tracers = [m for m in model.modules() if callable(getattr(m, "pop_expert_choices", None))]
    with torch.no_grad():
        cache = SlabCache()  # the engine's cache
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                    cache=cache, use_cache=True)
        lengths, next_ids = mask.sum(-1), out.logits[:, -1].argmax(-1)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(tokens):
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=lengths[:, None],
                            cache=cache, use_cache=True)
                if tracers:
                    torch.stack([m.pop_expert_choices()[:, -1] for m in tracers], dim=1).cpu()
                lengths, next_ids = lengths + 1, out.logits[:, -1].float().argmax(-1)
    path.write_text(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    log(f"  profile: {path}")


def bench_llama_cpp(args: argparse.Namespace) -> tuple[float, float]:
    """llama-cpp-python on the base's GGUF file, one sequence, greedy, EOS banned."""
    from llama_cpp import Llama

    from trainables.lm.base import gguf_path

    llm = Llama(model_path=str(gguf_path()), n_threads=args.threads, n_threads_batch=args.threads, n_ctx=512,
                verbose=False)
    no_eos = {llm.token_eos(): -1e9}

    def run(tokens: int) -> float:
        start = time.perf_counter()
        llm.create_completion(PROMPTS[0], max_tokens=tokens, temperature=0.0, logit_bias=no_eos)
        return time.perf_counter() - start

    run(min(args.tokens, 8))
    runs = [decode_ms(run, args.tokens) for _ in range(args.repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def skip_reason(model: str, weights: str, batch: int, unmerged: bool = False, device: str = "cpu") -> str | None:
    """Why (model, weights, batch) is not measured here, or None."""
    if device != "cpu" and (weights == "int8" or model == "llama_cpp"):
        return "int8 weights and llama_cpp are CPU-only here"
    if weights == "int8" and unmerged and model in ("lora", "mixlora"):
        return "int8 weights are made after the LoRA merge (not with --unmerged)"
    if model == "llama_cpp" and weights != "fp32":
        return "llama_cpp runs its own GGUF weights (Q4_1): measured under fp32 only"
    if model == "llama_cpp":
        import importlib.util

        if batch != 1:
            return "llama_cpp is measured at batch 1 only"
        if importlib.util.find_spec("llama_cpp") is None:
            return 'llama-cpp-python is not installed: CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python'
    return None


def record(model: str, weights: str, batch: int, ms: float, wall: float, args: argparse.Namespace) -> dict:
    from trainables.lm.base import inference_dtype

    return {"model": model, "weights": weights, "batch": batch, "tokens_per_s": round(1000 * batch / ms, 2),
            "ms_per_token": round(ms, 3), "merged": model in ("lora", "mixlora") and not args.unmerged,
            "tokens": args.tokens, "repeats": args.repeats, "threads": args.threads,
            "base": "gguf" if model == "llama_cpp" else args.base, "wall_s": round(wall, 3), "device": args.device,
            "dtype": str(inference_dtype(args.device)).removeprefix("torch."),  # the float weights' (int8: adapters')
            "compiled": args.compile}


def table(records: list[dict[str, Any]]) -> str:
    """One line per record, with the time per token relative to the base's (same weights, same batch)."""
    base = {(r["weights"], r["batch"]): r["ms_per_token"] for r in records
            if r["model"] == "base" and "skipped" not in r}
    lines = [f"{'model':<10} {'weights':<7} {'batch':>5} {'tok/s':>9} {'ms/token':>9} {'x base':>7}"]
    for r in records:
        if "skipped" in r:
            lines.append(f"{r['model']:<10} {r['weights']:<7} {r['batch']:>5}   skipped: {r['skipped']}")
            continue
        ref = base.get((r["weights"], r["batch"]))
        ratio = f"{r['ms_per_token'] / ref:7.2f}" if ref else f"{'':>7}"
        lines.append(f"{r['model']:<10} {r['weights']:<7} {r['batch']:>5} {r['tokens_per_s']:>9.1f} "
                     f"{r['ms_per_token']:>9.2f} {ratio}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the JSON records")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--weights", default="fp32", help="comma-separated, from " + ", ".join(WEIGHTS))
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--tokens", type=int, default=64, help="generated tokens per sequence")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per record (the median is kept)")
    parser.add_argument("--threads", type=int, default=2, help="torch (and llama.cpp) CPU threads")
    parser.add_argument("--base", default="smollm2-135m-instruct", help="the base model (tiny-llama for a smoke run)")
    parser.add_argument("--unmerged", action="store_true", help="keep LoRA unmerged, as training does")
    parser.add_argument("--profile", help="also write a torch.profiler table per (model, batch) into this folder")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 tokens, one repeat")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model's forward (dynamic shapes)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where the engine runs (cuda: bfloat16, as serving puts a model there)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    if args.quick:
        args.tokens, args.repeats = 8, 1
    models, weights = args.models.split(","), args.weights.split(",")
    batches = [int(b) for b in args.batch.split(",")]
    for name in models:
        if name not in MODELS:
            parser.error(f"--models: unknown {name!r}, expected some of {', '.join(MODELS)}")
    for name in weights:
        if name not in WEIGHTS:
            parser.error(f"--weights: unknown {name!r}, expected some of {', '.join(WEIGHTS)}")
    torch.set_num_threads(args.threads)
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    records: list[dict[str, Any]] = []
    for model_name in models:
        for weight in weights:
            loaded = None
            for batch in batches:
                reason = skip_reason(model_name, weight, batch, args.unmerged, args.device)
                if reason is not None:
                    log(f"{model_name} {weight} batch {batch}: skipped: {reason}")
                    records.append({"model": model_name, "weights": weight, "batch": batch, "skipped": reason})
                    continue
                log(f"{model_name} {weight} batch {batch}: {args.tokens} tokens x {args.repeats}")
                if model_name == "llama_cpp":
                    ms, wall = bench_llama_cpp(args)
                else:
                    loaded = loaded or build_model(args.base, model_name, not args.unmerged, weight, args.device,
                                                   args.compile)
                    profile = profile_dir / f"profile_{model_name}_{weight}_b{batch}.txt" if profile_dir else None
                    ms, wall = bench_engine(*loaded, batch, args, profile)
                records.append(record(model_name, weight, batch, ms, wall, args))
    Path(args.json).write_text(json.dumps(records, indent=2))
    print(table(records))


if __name__ == "__main__":
    main()
